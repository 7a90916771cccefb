//! sd_notify: the guest's notify socket (`/run/host/notify` inside), and our own READY=1
//! to a supervisor.

use std::path::PathBuf;

use ns_core::{Context, Result};

/// The guest's sd_notify socket (`/run/host/notify` inside): a datagram socket in our runtime
/// dir, removed when dropped. Like nspawn's, only container root may send to it: the socket
/// is mode 0600 and owned by `owner` (container root on the host, for user namespaces).
pub struct NotifySocket {
    pub socket: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
}

impl NotifySocket {
    pub fn bind(owner: Option<u32>) -> Result<NotifySocket> {
        use std::os::unix::fs::PermissionsExt;
        let dir = ns_core::paths::runtime_subdir("notify")?;
        // Sockets of monitors that were killed: collected here, off the path of other starts.
        for p in ns_core::paths::of_dead_monitors(&dir, "") {
            let _ = std::fs::remove_file(p);
        }
        let path = dir.join(std::process::id().to_string());
        let _ = std::fs::remove_file(&path); // a dead monitor's, with our pid
        let socket = std::os::unix::net::UnixDatagram::bind(&path)
            .ctx(|| format!("cannot bind {}", path.display()))?;
        socket
            .set_nonblocking(true)
            .ctx(|| "cannot make the notify socket non-blocking".into())?;
        let n = NotifySocket { socket, path };
        std::fs::set_permissions(&n.path, std::fs::Permissions::from_mode(0o600))
            .ctx(|| format!("cannot chmod {}", n.path.display()))?;
        if let Some(id) = owner {
            std::os::unix::fs::lchown(&n.path, Some(id), Some(id))
                .ctx(|| format!("cannot chown {} to {id}", n.path.display()))?;
        }
        Ok(n)
    }

    /// The guest said READY=1 (in what it sent now)?
    pub fn ready(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Ok(n) = self.socket.recv(&mut buf) {
            ready |= String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1");
        }
        ready
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// sd_notify(READY=1) to our own supervisor, if it gave us a NOTIFY_SOCKET.
pub fn notify_ready() {
    notify("READY=1\n");
}

/// Our supervisor's watchdog (systemd's `WatchdogSec=`: `WATCHDOG_USEC`, for us when
/// `WATCHDOG_PID` is ours or unset): pinged with WATCHDOG=1 every half period, as
/// nspawn's event loop does.
pub struct Watchdog {
    every: std::time::Duration,
    next: std::time::Instant,
}

impl Watchdog {
    /// The watchdog our supervisor asked for, if any.
    pub fn from_env() -> Option<Watchdog> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        let pid = std::env::var("WATCHDOG_PID").ok();
        if pid.is_some_and(|p| p != std::process::id().to_string()) || usec == 0 {
            return None;
        }
        let every = std::time::Duration::from_micros(usec / 2);
        Some(Watchdog {
            every,
            next: std::time::Instant::now(),
        })
    }

    /// Ping if it is time; how long until the next ping is due (ms, for poll).
    pub fn tick(&mut self) -> u16 {
        let now = std::time::Instant::now();
        if now >= self.next {
            notify("WATCHDOG=1\n");
            self.next = now + self.every;
        }
        let left = self.next.saturating_duration_since(now).as_millis();
        left.clamp(1, u16::MAX as u128) as u16
    }
}

/// Send `msg` to our supervisor's NOTIFY_SOCKET, if it gave us one.
fn notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let addr = match target.strip_prefix('@') {
        Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&target),
    };
    if let Ok(a) = addr {
        let _ = sock.send_to_addr(msg.as_bytes(), &a);
    }
}
