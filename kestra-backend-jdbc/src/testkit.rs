//! Transaction faults for tests (feature `testkit`; without it none of this code exists): when
//! [`TXN_FAULTS_ENV`] is set in a process's environment, the executor's units of work fail now and
//! then with a real transient database error - a serialization failure or a deadlock - so that the
//! backend's error classification, its retries, the rollback of a unit and the release of its claim
//! run as they do on a busy production database.
//!
//! The value is `<probability>` or `<probability>:<seed>`: each executor claim (`Queue::begin`)
//! draws once; with the probability it picks one place of that claim's life to fail at:
//!
//! - `claim`: the claim's own transaction, before it commits (the claim is retried by `begin`);
//! - `lock`: the unit's transaction right after it locks the claimed rows (the claim is released
//!   and retried by `begin`);
//! - `load`: before the unit loads an execution; `save`: before it saves one; `commit`: after the
//!   unit deleted its rows from the queue, before the transaction commits (the unit fails, is
//!   rolled back, its claim released, and the executor processes the messages again).
//!
//! The error is raised by the database itself where it can raise one on demand: on PostgreSQL
//! `RAISE EXCEPTION ... USING ERRCODE = '40001'` (serialization failure) or `'40P01'` (deadlock
//! detected), on MySQL/MariaDB `SIGNAL SQLSTATE '40001'` (MySQL's code for both, with error number
//! 1213 for a deadlock). SQLite cannot raise `SQLITE_BUSY` from SQL: there the error is built in
//! the process (a database error with the busy code `5`, or `517` for a busy snapshot) and returned
//! where the statement's error would be - it takes the same classification and paths, but the
//! connection saw no failed statement. Each injection is logged at WARN with [`INJECTED`].

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms the injection: `<probability>` or `<probability>:<seed>`.
pub const TXN_FAULTS_ENV: &str = "KESTRA_TESTKIT_TXN_FAULTS";

/// The phrase every injection logs (at WARN): a test counts the injections by it.
pub const INJECTED: &str = "testkit: injected a transient transaction failure";

/// Where in an executor claim's life the failure is injected (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnPoint {
    /// The claim's own transaction.
    Claim,
    /// The unit's transaction, after locking the claimed rows.
    Lock,
    /// Before the unit loads an execution.
    Load,
    /// Before the unit saves an execution.
    Save,
    /// Before the unit's transaction commits.
    Commit,
}

impl TxnPoint {
    const ALL: [TxnPoint; 5] = [
        TxnPoint::Claim,
        TxnPoint::Lock,
        TxnPoint::Load,
        TxnPoint::Save,
        TxnPoint::Commit,
    ];

    /// The point's name in the log.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnPoint::Claim => "claim",
            TxnPoint::Lock => "lock",
            TxnPoint::Load => "load",
            TxnPoint::Save => "save",
            TxnPoint::Commit => "commit",
        }
    }
}

/// The failure injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnFailure {
    /// A serialization failure (SQLSTATE 40001; SQLite: busy snapshot).
    Serialization,
    /// A deadlock (PostgreSQL 40P01, MySQL 40001/1213; SQLite: busy).
    Deadlock,
}

struct Armed {
    /// In millionths.
    probability: u64,
    state: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(TXN_FAULTS_ENV).ok()?;
            match parse(&value) {
                Ok((probability, seed)) => {
                    tracing::warn!(
                        probability,
                        seed,
                        "testkit: transient transaction failures are injected into the executor's units of work ({TXN_FAULTS_ENV})"
                    );
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let millionths = (probability * 1_000_000.0).round() as u64;
                    Some(Armed {
                        probability: millionths,
                        state: AtomicU64::new(seed),
                    })
                }
                Err(reason) => {
                    tracing::error!(
                        "{TXN_FAULTS_ENV}='{value}' is ignored: {reason} (expected <probability 0..1>[:<seed>])"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// `<probability>[:<seed>]`; without a seed, one from the clock and the process id.
fn parse(value: &str) -> Result<(f64, u64), String> {
    let (p, seed) = match value.split_once(':') {
        Some((p, s)) => (
            p,
            Some(
                s.trim()
                    .parse::<u64>()
                    .map_err(|e| format!("bad seed '{s}': {e}"))?,
            ),
        ),
        None => (value, None),
    };
    let probability: f64 = p
        .trim()
        .parse()
        .map_err(|e| format!("bad probability '{p}': {e}"))?;
    if !(0.0..=1.0).contains(&probability) {
        return Err(format!("probability {probability} is not within 0..1"));
    }
    let seed = seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    Ok((probability, seed))
}

/// SplitMix64 over the armed state.
fn next(armed: &Armed) -> u64 {
    let mut z = armed
        .state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One draw per executor claim: where this claim fails, if it does.
pub(crate) fn plan_unit() -> Option<TxnPoint> {
    let armed = armed()?;
    if next(armed) % 1_000_000 >= armed.probability {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let at = (next(armed) % TxnPoint::ALL.len() as u64) as usize;
    Some(TxnPoint::ALL[at])
}

/// Which failure to inject now (logged at WARN with [`INJECTED`]).
pub(crate) fn failure(point: TxnPoint) -> TxnFailure {
    let failure = match armed().map(next) {
        Some(n) if n % 2 == 0 => TxnFailure::Deadlock,
        _ => TxnFailure::Serialization,
    };
    tracing::warn!(point = point.name(), ?failure, "{INJECTED}");
    failure
}

/// SQLite's busy error, built in the process (SQLite has no SQL to raise it).
#[derive(Debug)]
pub(crate) struct InjectedBusy {
    code: &'static str,
}

impl InjectedBusy {
    /// `SQLITE_BUSY` (5) for a deadlock, `SQLITE_BUSY_SNAPSHOT` (517) for a serialization failure.
    pub(crate) fn new(failure: TxnFailure) -> InjectedBusy {
        InjectedBusy {
            code: match failure {
                TxnFailure::Deadlock => "5",
                TxnFailure::Serialization => "517",
            },
        }
    }
}

impl std::fmt::Display for InjectedBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "database is locked (code {}, injected by the testkit)",
            self.code
        )
    }
}

impl std::error::Error for InjectedBusy {}

impl sqlx::error::DatabaseError for InjectedBusy {
    fn message(&self) -> &str {
        "database is locked (injected by the testkit)"
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(std::borrow::Cow::Borrowed(self.code))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probability_and_seed() {
        assert_eq!(parse("0.25:7"), Ok((0.25, 7)));
        assert_eq!(parse(" 1 ").map(|(p, _)| p), Ok(1.0));
        let refused = |value: &str| parse(value).err().unwrap_or_default();
        assert!(refused("1.5").contains("not within 0..1"));
        assert!(refused("x").contains("bad probability 'x'"));
        assert!(refused("0.1:y").contains("bad seed 'y'"));
    }
}
