//! The dialect's side of the transaction faults of [`crate::testkit`] (feature `testkit`): a real
//! transient error raised by the database in the unit's transaction (SQLite: built in the process).

use super::*;
use crate::common::Flavor;
use crate::testkit::{InjectedBusy, TxnFailure, TxnPoint};

/// SQLite's transient error at `point` (built in the process; see [`inject`]).
pub(super) fn injected(point: TxnPoint) -> sqlx::Error {
    sqlx::Error::Database(Box::new(InjectedBusy::new(crate::testkit::failure(point))))
}

/// Fail `conn`'s transaction at `point` with a transient error (see [`crate::testkit`]).
pub(super) async fn inject(conn: &mut Conn, point: TxnPoint) -> Result<(), sqlx::Error> {
    let failure = crate::testkit::failure(point);
    let sql = match (FLAVOR, failure) {
        (Flavor::Sqlite, _) => return Err(injected(point)),
        (Flavor::Postgres, TxnFailure::Serialization) => {
            "DO $$ BEGIN RAISE EXCEPTION 'testkit: injected serialization failure' USING ERRCODE = '40001'; END $$"
        }
        (Flavor::Postgres, TxnFailure::Deadlock) => {
            "DO $$ BEGIN RAISE EXCEPTION 'testkit: injected deadlock' USING ERRCODE = '40P01'; END $$"
        }
        (Flavor::MySql, TxnFailure::Serialization) => {
            "SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'testkit: injected serialization failure'"
        }
        (Flavor::MySql, TxnFailure::Deadlock) => {
            "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'testkit: injected deadlock'"
        }
    };
    sqlx::raw_sql(sql).execute(&mut *conn).await?;
    Err(sqlx::Error::Protocol(format!(
        "testkit: the statement that injects a {failure:?} at {} did not fail",
        point.name()
    )))
}
