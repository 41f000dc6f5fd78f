//! A database server of the scenario's own, to kill and start again: the shared servers of
//! `scripts/services.sh` are never restarted (other tests run on them). PostgreSQL from the
//! binaries under `/usr/lib/postgresql/<version>/bin` (the newest), MariaDB from `mariadbd` and
//! `mariadb-install-db` on the PATH (what the services script installs); each on a free port with
//! its data in a temporary directory, run as the unprivileged user the services script uses
//! (`postgres`, `mysql`) when the tests run as root. Missing binaries: skipped loudly, a failure
//! under CI=true.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MariaDB.
    MariaDb,
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The newest PostgreSQL's `bin` folder.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `name` on the PATH (or in /usr/sbin, where Debian puts `mariadbd`).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
}

/// A database server of the test's own.
pub struct OwnServer {
    engine: Engine,
    /// Folder of its executables (PostgreSQL) or of `mariadbd`.
    bin: PathBuf,
    /// The unprivileged user it runs as (when root).
    user: Option<&'static str>,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// How many times it was started.
    starts: u32,
}

impl OwnServer {
    /// A fresh server of `engine`, initialised and started; `None` (loudly; a panic under CI=true)
    /// when its binaries are missing.
    pub fn start(engine: Engine) -> Option<OwnServer> {
        let found = match engine {
            Engine::Postgres => postgres_bin(),
            Engine::MariaDb => which("mariadbd")
                .filter(|_| which("mariadb-install-db").is_some())
                .and_then(|p| p.parent().map(Path::to_path_buf)),
        };
        let Some(bin) = found else {
            assert!(
                !ci(),
                "no {engine:?} binaries under CI=true: scripts/services.sh installs them"
            );
            eprintln!("SKIPPED: no {engine:?} binaries; run scripts/services.sh");
            return None;
        };
        let user = is_root().then_some(match engine {
            Engine::Postgres => "postgres",
            Engine::MariaDb => "mysql",
        });
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = OwnServer {
            engine,
            bin,
            user,
            dir,
            port: free_port(),
            child: None,
            starts: 0,
        };
        server.init();
        server.run();
        server.create_database();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// A command run as the server's user.
    fn command(&self, program: &Path) -> Command {
        match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn must(&self, mut command: Command, what: &str) {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init(&self) {
        if let Some(user) = self.user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(self.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the server's directory to {user}");
        }
        match self.engine {
            Engine::Postgres => {
                let mut c = self.command(&self.bin.join("initdb"));
                c.arg("-D").arg(self.data()).args([
                    "-U",
                    "kestra",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]);
                self.must(c, "initdb");
            }
            Engine::MariaDb => {
                let install = which("mariadb-install-db").expect("mariadb-install-db");
                let mut c = Command::new(install);
                c.arg(format!("--datadir={}", self.data().display()))
                    .args(["--skip-test-db", "--auth-root-authentication-method=socket"]);
                match self.user {
                    Some(user) => c.arg(format!("--user={user}")),
                    None => c.arg(format!(
                        "--auth-root-socket-user={}",
                        std::env::var("USER").unwrap_or_default()
                    )),
                };
                self.must(c, "mariadb-install-db");
            }
        }
    }

    /// Start the server on the data it has and wait until it answers.
    pub fn run(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("the server's log");
        let mut command = match self.engine {
            Engine::Postgres => {
                let mut c = self.command(&self.bin.join("postgres"));
                c.arg("-D").arg(self.data()).args([
                    "-p",
                    &self.port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=100",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    // Killed as a process, not as a machine: the page cache keeps what was written.
                    "fsync=off",
                    "-k",
                ]);
                c.arg(self.dir.path());
                c
            }
            Engine::MariaDb => {
                let mut c = Command::new(self.bin.join("mariadbd"));
                c.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data().display()))
                    .arg(format!("--socket={}", self.socket().display()))
                    .arg(format!(
                        "--pid-file={}",
                        self.dir.path().join("mariadbd.pid").display()
                    ))
                    .arg(format!("--port={}", self.port))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--max-connections=200",
                        "--innodb-buffer-pool-size=64M",
                        "--innodb-log-file-size=16M",
                        "--innodb-flush-log-at-trx-commit=2",
                        "--skip-log-bin",
                    ]);
                if let Some(user) = self.user {
                    c.arg(format!("--user={user}"));
                }
                c
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log);
        // Its own process group: the kill reaches the server behind runuser and its children.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let started = Instant::now();
        self.child = Some(command.spawn().expect("start the database server"));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("wait"))
            {
                panic!(
                    "the {:?} server exited ({status}):\n{}",
                    self.engine,
                    self.output()
                );
            }
            if self.ready() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the {:?} server did not answer in 60 s:\n{}",
                self.engine,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "[faults] own {:?} on 127.0.0.1:{} up in {:?} (start {})",
            self.engine,
            self.port,
            started.elapsed(),
            self.starts
        );
    }

    fn ready(&self) -> bool {
        let mut c = match self.engine {
            Engine::Postgres => {
                let mut c = Command::new(self.bin.join("pg_isready"));
                c.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
                c
            }
            Engine::MariaDb => {
                let mut c = Command::new("mariadb-admin");
                c.arg(format!("--socket={}", self.socket().display()))
                    .args(["-u", "root", "ping"]);
                c
            }
        };
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn create_database(&self) {
        match self.engine {
            // The superuser `kestra` (trust on loopback) and its database `postgres` suffice.
            Engine::Postgres => {}
            Engine::MariaDb => {
                let mut c = Command::new("mariadb");
                c.arg(format!("--socket={}", self.socket().display()))
                    .args(["-u", "root", "-e"])
                    .arg(
                        "CREATE USER 'kestra'@'127.0.0.1' IDENTIFIED BY 'kestra'; \
                         CREATE DATABASE kestra; \
                         GRANT ALL PRIVILEGES ON *.* TO 'kestra'@'127.0.0.1'; FLUSH PRIVILEGES;",
                    );
                self.must(c, "create the MariaDB user and database");
            }
        }
    }

    /// The URL of its database.
    pub fn url(&self) -> String {
        match self.engine {
            Engine::Postgres => format!("postgres://kestra@127.0.0.1:{}/postgres", self.port),
            Engine::MariaDb => format!("mysql://kestra:kestra@127.0.0.1:{}/kestra", self.port),
        }
    }

    /// The last lines of its log.
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL to the server's whole process group (no goodbye, no checkpoint), then reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            eprintln!(
                "[faults] own {:?} on port {} SIGKILLed",
                self.engine, self.port
            );
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}
