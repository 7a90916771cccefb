//! A container's pty relayed to the user's terminal: by the monitor (the master of the pty
//! whose slave is the container's /dev/console, SYNC-6), and by `ns-ctl shell`.
//!
//! `interactive`: the host terminal in raw mode (restored on every way out), keystrokes to
//! the pty (so Ctrl-C and Ctrl-Z reach the container's foreground job, not ns-run), its output
//! to stdout, window size passed on and kept in sync (SIGWINCH); Ctrl-] three times within a
//! second kills the container. `read-only`: output only. `passive`: output only after the end.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::state::Console as Mode;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Ctrl-].
const ESCAPE: u8 = 0x1d;

pub struct Console {
    master: OwnedFd,
    mode: Mode,
    /// The host terminal's settings before raw mode, to restore.
    saved: Option<Termios>,
    stdin: std::io::Stdin,
    stdin_open: bool,
    /// The container's side is hung up (vhangup, e.g. a getty starting, or no process has it
    /// open): the master reads EIO until someone opens the console again. Polled on a timer
    /// meanwhile, since poll would report the hang-up without end.
    hung_up: bool,
    escapes: Vec<Instant>,
    /// `--log-file`: stdout is a log this relay keeps bounded.
    log: Option<crate::logfile::LogFile>,
}

/// What the relay asks the monitor to do.
pub enum Action {
    None,
    /// Ctrl-] three times: kill the container.
    Kill,
}

impl Console {
    pub fn start(master: OwnedFd, mode: Mode) -> Console {
        let stdin = std::io::stdin();
        let mut saved = None;
        if mode == Mode::Interactive {
            if let Ok(t) = tcgetattr(stdin.as_fd()) {
                let mut raw = t.clone();
                cfmakeraw(&mut raw);
                if tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_ok() {
                    saved = Some(t);
                }
            }
        }
        let _ = nix::fcntl::fcntl(
            master.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let c = Console {
            master,
            mode,
            saved,
            stdin: std::io::stdin(),
            stdin_open: mode == Mode::Interactive,
            hung_up: false,
            escapes: Vec::new(),
            log: None,
        };
        c.sync_window_size();
        c
    }

    /// Keep stdout, the log `log`, bounded as the relay writes to it.
    pub fn logging_to(mut self, log: Option<crate::logfile::LogFile>) -> Console {
        self.log = log;
        self
    }

    /// The fds to poll now: the master (unless passive), and stdin when it is relayed.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v = Vec::new();
        if !self.hung_up && self.mode != Mode::Passive {
            v.push(self.master.as_fd());
        }
        if self.stdin_open {
            v.push(self.stdin.as_fd());
        }
        v
    }

    pub fn is_master(&self, fd: std::os::fd::RawFd) -> bool {
        use std::os::fd::AsRawFd;
        fd == self.master.as_raw_fd()
    }

    /// The terminal's size on the pty (at start and on SIGWINCH).
    pub fn sync_window_size(&self) {
        let stdout = std::io::stdout();
        for fd in [self.stdin.as_fd(), stdout.as_fd()] {
            if let Ok(ws) = crate::sys::window_size(fd) {
                let _ = crate::sys::set_window_size(self.master.as_fd(), &ws);
                return;
            }
        }
    }

    /// How long poll may wait: while hung up, the master is retried every 100 ms.
    pub fn poll_timeout(&self) -> nix::poll::PollTimeout {
        if self.hung_up && self.mode != Mode::Passive {
            nix::poll::PollTimeout::from(100u16)
        } else {
            nix::poll::PollTimeout::NONE
        }
    }

    /// After each poll: retry a hung-up master.
    pub fn tick(&mut self) {
        if self.hung_up && self.mode != Mode::Passive {
            self.on_master();
        }
    }

    /// Container output is ready: copy it to stdout. Returns whether anything was read.
    pub fn on_master(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        match nix::unistd::read(&self.master, &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => {
                self.hung_up = true;
                false
            }
            Err(_) => {
                self.hung_up = false; // EAGAIN: open again, nothing to read
                false
            }
            Ok(n) => {
                self.hung_up = false;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                if let Some(log) = self.log.as_mut() {
                    log.wrote(n as u64);
                }
                true
            }
        }
    }

    /// Keystrokes are ready: pass them on, watching for Ctrl-] x3 within a second.
    pub fn on_stdin(&mut self) -> Action {
        let mut buf = [0u8; 4096];
        let n = match nix::unistd::read(self.stdin.as_fd(), &mut buf) {
            Ok(0) | Err(_) => {
                self.stdin_open = false;
                return Action::None;
            }
            Ok(n) => n,
        };
        let now = Instant::now();
        for b in &buf[..n] {
            if *b == ESCAPE {
                self.escapes
                    .retain(|t| now.duration_since(*t) < Duration::from_secs(1));
                self.escapes.push(now);
                if self.escapes.len() >= 3 {
                    return Action::Kill;
                }
            } else {
                self.escapes.clear();
            }
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match nix::unistd::write(&self.master, rest) {
                Ok(w) => rest = &rest[w..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        Action::None
    }

    /// The container is gone: copy what the pty still holds, and give the terminal back.
    pub fn finish(&mut self) {
        while self.on_master() {}
        self.restore();
    }

    fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &t);
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.restore();
    }
}
