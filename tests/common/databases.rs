//! Real database servers for tests: Debian's PostgreSQL and MariaDB, each started in a temporary
//! directory on a free loopback port and stopped when dropped. Machines and CI run as root, which
//! `initdb` and `postgres` refuse: they run as `nobody` through `runuser` (MariaDB takes `--user`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

const UNPRIVILEGED: &str = "nobody";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A command run as the unprivileged user when the tests run as root.
fn as_unprivileged(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", UNPRIVILEGED, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A directory the unprivileged user owns.
fn data_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap();
    if is_root() {
        let status = Command::new("chown").args([UNPRIVILEGED]).arg(dir.path()).status().unwrap();
        assert!(status.success(), "chown {}", dir.path().display());
    }
    dir
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start-up: {status}");
        }
        assert!(Instant::now() < deadline, "{what} not listening on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL server; user `postgres`, database `postgres`, trust auth on loopback.
pub struct Postgres {
    pub port: u16,
    child: Child,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (bash scripts/setup installs it)")
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql/*/bin"))
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = data_dir("seawall-pg-");
        let data = dir.path().join("data");
        let output = as_unprivileged(&postgres_bin("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(output.status.success(), "initdb: {}", String::from_utf8_lossy(&output.stderr));
        let port = free_port();
        let mut child = as_unprivileged(&postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "unix_socket_directories=", "-c", "max_connections=50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "postgres");
        // Listening is not accepting queries yet ("the database system is starting up").
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(postgres_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "postgres not ready within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Postgres { port, child, data, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown), as an outage. The signal goes to the postmaster itself
    /// (its pid file's first line), not to `runuser`, which does not pass it on.
    pub fn stop(&mut self) {
        if let Ok(pid_file) = std::fs::read_to_string(self.data.join("postmaster.pid")) {
            if let Some(pid) = pid_file.lines().next() {
                let _ = Command::new("kill").args(["-INT", pid.trim()]).status();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A MariaDB server; user `root` without a password on loopback, database `test`.
pub struct MariaDb {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let dir = data_dir("seawall-mariadb-");
        let data = dir.path().join("data");
        let user = if is_root() { UNPRIVILEGED.to_string() } else { whoami() };
        let output = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={user}"))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("MariaDB is not installed (bash scripts/setup installs it)");
        assert!(output.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&output.stderr));
        let port = free_port();
        let mut child = Command::new(mariadbd())
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--user={user}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0"])
            .args(["--skip-log-bin", "--max-connections=50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "mariadbd");
        MariaDb { port, child, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/mysql", self.port)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn mariadbd() -> PathBuf {
    ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("MariaDB is not installed (bash scripts/setup installs it)")
}

fn whoami() -> String {
    let output = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
