//! Start-up checks and shutdown: addresses are checked before Pingora binds them (it binds inside
//! a task and panics there), SIGHUP is taken before the server runs (unhandled, it would kill the
//! process), and SIGTERM drains: listeners close, in-flight requests finish, and the process exits
//! as soon as none remain or the grace period ends.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::config::Config;
use crate::gateway::Gateway;

/// Every address the gateway will listen on, with a name for messages.
pub fn addresses(config: &Config) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> =
        config.listeners.iter().map(|l| (format!("listener `{}`", l.name), l.address)).collect();
    out.push(("admin listener".to_string(), config.admin.address));
    out
}

/// Fails with one clear line when an address cannot be bound (in use, not local, no permission).
pub fn check_addresses_free(addresses: &[(String, SocketAddr)]) -> Result<(), String> {
    for (what, address) in addresses {
        // Rust's std sets SO_REUSEADDR like Pingora does, so a socket in TIME_WAIT is no false alarm.
        TcpListener::bind(address).map_err(|e| format!("cannot listen on {address} ({what}): {e}"))?;
    }
    Ok(())
}

/// Unix signals for a gateway run from the command line: SIGTERM drains, SIGINT and SIGQUIT
/// exit fast (zero-downtime upgrades via SIGQUIT are not offered).
pub struct UnixSignals;

#[async_trait]
impl ShutdownSignalWatch for UnixSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::quit()))
        else {
            tracing::error!("cannot install signal handlers; exiting");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining (new connections refused, in-flight requests finish)");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: exiting now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// A shutdown trigger for gateways run in-process (tests, embedding).
pub struct ShutdownHandle(watch::Sender<Option<bool>>);

impl ShutdownHandle {
    pub fn new() -> (ShutdownHandle, ManualShutdown) {
        let (tx, rx) = watch::channel(None);
        (ShutdownHandle(tx), ManualShutdown(rx))
    }

    /// Asks the gateway to drain (`graceful`) or stop at once.
    pub fn shutdown(&self, graceful: bool) {
        let _ = self.0.send(Some(graceful));
    }
}

impl Drop for ShutdownHandle {
    fn drop(&mut self) {
        let _ = self.0.send(Some(false));
    }
}

pub struct ManualShutdown(watch::Receiver<Option<bool>>);

#[async_trait]
impl ShutdownSignalWatch for ManualShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let graceful = match rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        };
        if graceful {
            ShutdownSignal::GracefulTerminate
        } else {
            ShutdownSignal::FastShutdown
        }
    }
}

/// SIGHUP reloads certificates, keys, CAs, CRLs and allowlist files ([`crate::reload`]).
/// Installed before the server starts: Pingora does not handle SIGHUP, which would kill it.
pub fn take_sighup(gateway: Arc<Gateway>) -> std::io::Result<()> {
    use signal_hook::consts::SIGHUP;
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP])?;
    std::thread::Builder::new().name("sighup".into()).spawn(move || {
        for _ in signals.forever() {
            tracing::info!("SIGHUP received: reloading certificates, keys, CAs, CRLs and allowlist files");
            crate::reload::reload_files(&gateway);
        }
    })?;
    Ok(())
}

/// Once Pingora starts its graceful shutdown, waits until no request is in flight (or the grace
/// period passes) and exits the process with 0. Pingora's own grace period is a fixed sleep.
pub fn exit_when_drained(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>, gateway: Arc<Gateway>) {
    let grace = gateway.config.server.grace_period;
    let spawned = std::thread::Builder::new().name("drain".into()).spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::GracefulTerminate) => {
                let start = Instant::now();
                while gateway.active_requests() > 0 && start.elapsed() < grace {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let left = gateway.active_requests();
                if left > 0 {
                    tracing::warn!(requests = left, "grace period over; exiting with requests still in flight");
                } else {
                    tracing::info!(drain_ms = start.elapsed().as_millis() as u64, "drained; exiting");
                }
                crate::daemon::remove_pid_file();
                std::process::exit(0);
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the drain watcher; SIGTERM will wait the whole grace period");
    }
}

/// How long the public listeners may take to accept connections after start.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// Exits with 2 when the listeners do not accept connections soon after start (Pingora binds
/// inside a task and only logs a panic there): the gateway never runs on without them.
pub fn exit_unless_listening(gateway: Arc<Gateway>, addresses: Vec<(String, SocketAddr)>) {
    let spawned = std::thread::Builder::new().name("listen-check".into()).spawn(move || {
        let start = Instant::now();
        while !gateway.is_ready() {
            if start.elapsed() > LISTEN_DEADLINE {
                let list: Vec<String> = addresses.iter().map(|(what, a)| format!("{a} ({what})")).collect();
                tracing::error!("listeners not accepting after {LISTEN_DEADLINE:?}: {}", list.join(", "));
                eprintln!("seawall: listeners did not start: {}", list.join(", "));
                crate::daemon::remove_pid_file();
                std::process::exit(2);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the listener check");
    }
}

/// Whether this process has a socket in the LISTEN state on `address`, from the kernel's table
/// (`/proc/net/tcp`, `/proc/net/tcp6`): a readiness check that opens no connection, so a TLS
/// listener logs no aborted handshake for it. Another process's socket on the address does not
/// count: it would take a listener that failed to bind (the port taken since start-up's check)
/// for ready. `None` when the table cannot be read.
pub fn is_listening(address: SocketAddr) -> Option<bool> {
    let table = match address {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    let ours = own_socket_inodes();
    Some(
        text.lines()
            .skip(1)
            .filter_map(listening_socket)
            .any(|(a, inode)| a == address && ours.as_ref().is_none_or(|ours| ours.contains(&inode))),
    )
}

/// The inodes of this process's sockets (`/proc/self/fd` links read `socket:[INODE]`); `None`
/// when they cannot be listed.
fn own_socket_inodes() -> Option<std::collections::HashSet<u64>> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|link| link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            .collect(),
    )
}

/// The local address and socket inode of one `/proc/net/tcp{,6}` line when its socket listens.
fn listening_socket(line: &str) -> Option<(SocketAddr, u64)> {
    const LISTEN: &str = "0A";
    let mut fields = line.split_whitespace().skip(1);
    let local = fields.next()?;
    let state = fields.nth(1)?;
    if state != LISTEN {
        return None;
    }
    // After the state: queues, timer, retransmits, uid, timeout, then the inode.
    let inode = fields.nth(5)?.parse().ok()?;
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host (little-endian) order.
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(|w| w.to_le_bytes()))
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), inode))
}

#[cfg(test)]
mod listen_table_tests {
    use super::*;

    #[test]
    fn reads_listening_sockets_from_the_kernel_table() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 530 1";
        assert_eq!(listening_socket(v4), Some(("127.0.0.1:8080".parse().unwrap(), 530)));
        let any = "   1: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 531 1";
        assert_eq!(listening_socket(any), Some(("0.0.0.0:8443".parse().unwrap(), 531)));
        let established =
            "   2: 0100007F:1F90 0100007F:EB58 01 00000000:00000000 03:00000298 00000000     0        0 0 3";
        assert_eq!(listening_socket(established), None);
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        assert_eq!(listening_socket(v6), Some(("[::1]:8080".parse().unwrap(), 1)));
    }

    #[test]
    fn a_bound_listener_is_seen_and_a_free_port_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert_eq!(is_listening(address), Some(true));
        drop(listener);
        assert_eq!(is_listening(address), Some(false));
    }

    #[test]
    fn another_process_listening_on_the_address_does_not_count() {
        use std::io::BufRead;
        let listen = "import socket, sys\n\
                      s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
                      print(s.getsockname()[1], flush=True); sys.stdin.read()";
        let mut child = std::process::Command::new("python3")
            .args(["-c", listen])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address: SocketAddr = format!("127.0.0.1:{}", line.trim()).parse().unwrap();
        assert_eq!(is_listening(address), Some(false), "{address} listens in another process");
        drop(child.stdin.take());
        child.wait().unwrap();
    }
}
