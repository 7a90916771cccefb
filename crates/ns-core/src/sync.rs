//! The sync socket between the monitor and the chain: a SOCK_SEQPACKET pair carrying small
//! typed messages. The chain keeps its end open (not close-on-exec) through every stage; the
//! last stage marks it close-on-exec, so the monitor reads EOF exactly when the payload's exec
//! succeeded.
//!
//! The host's half (fork, exec ns-enter, answer) is `ns_host::chain`, used by ns-run's monitor
//! and `ns-oci create` alike.
//!
//! Sync points, numbered in the order they happen (grep for `SYNC-n` to find both halves):
//!   SYNC-0  monitor → ns-enter   `Cgroups` the container's v1 cgroups, their limits and its
//!           device policy are ready (root, v1 hierarchies only): ns-enter joins them first
//!   SYNC-1  ns-enter → monitor   `UserNs` its user namespace exists: write the id maps;
//!           monitor → ns-enter   `Mapped`, with the image as a detached mount attached when
//!           the root is idmapped (only the host may idmap a host file system) or the plan's
//!           host paths come by fd (`host_by_fd`: only host root may enter a 0700 directory);
//!           ns-enter hands it to ns-mount as `--root-fd`
//!   SYNC-2  ns-enter → monitor   `Pid`   the container's PID 1 exists (host pid); also
//!           ns-caps `--fork` → the entering tool: the host pid of the process it forked
//!   SYNC-3  monitor → PID 1      `Go`    host-side setup done, continue the chain
//!   then, while ns-mount builds the root, in the order of its mounts:
//!   SYNC-4  ns-mount → monitor   `Created` before it creates a host-visible path (a mount
//!           point in the image, an overlay workdir) that the monitor removes after exit
//!   SYNC-5  ns-mount → monitor   `NeedMount` for a user mount the host makes (an idmapped
//!           bind; with `host_by_fd` every host-sourced bind and overlay), or `NeedProc` for
//!           a procfs of the container's PID namespace where the kernel refuses ns-mount
//!           one (in a user namespace whose mount namespace shows no /proc fully, as inside
//!           another container), or `NeedSys` for a sysfs of the network namespace it shares
//!           with the monitor (the kernel refuses ns-mount one); monitor → ns-mount `Mount`
//!           with the detached mount attached (`NoMount` where the host cannot make a sysfs
//!           either)
//!   SYNC-6  ns-mount → monitor   `Console` with the master of the container's pty attached
//!   SYNC-7  ns-caps → runtime    `Waiting` (OCI create only): set up, about to block on the
//!           start fifo; the socket closes right after
//!   SYNC-8  any stage → monitor  `Failed` before the stage exits non-zero (at any point)

use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use crate::error::{Context, Error, Result};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Msg {
    Pid(i32),
    Go,
    /// SYNC-0: the container's v1 cgroups exist (monitor → ns-enter, before anything else).
    Cgroups,
    Failed {
        stage: String,
        code: i32,
        message: String,
    },
    UserNs,
    Mapped,
    /// SYNC-5: the detached mount asked for (attached).
    Mount,
    /// SYNC-6: the pty master (attached) of the container's /dev/console.
    Console,
    /// SYNC-5: user mount number `op`, made on the host: its source opened there (idmapped
    /// for `--bind=…:idmap`), or its overlay assembled there from its layers.
    NeedMount {
        op: usize,
    },
    /// SYNC-5: a procfs of the container's PID namespace, made on the host (proc's `pidns`
    /// option), as the kernel refuses ns-mount a new one.
    NeedProc,
    /// SYNC-5: a sysfs of the network namespace the container shares with the monitor,
    /// made on the host (read-only, locked), as the kernel refuses ns-mount one.
    NeedSys,
    /// SYNC-5: the host cannot make what was asked either (`NeedSys`).
    NoMount,
    Created {
        path: std::path::PathBuf,
        /// Remove with its content (a workdir), not only when empty (a mount point).
        recursive: bool,
    },
    /// SYNC-7: the container is created and waits for `start`.
    Waiting,
}

/// One end of the sync socket.
#[derive(Debug)]
pub struct SyncSocket(OwnedFd);

impl SyncSocket {
    /// A connected pair: (monitor end, chain end). Both close-on-exec; the chain end is made
    /// inheritable by the monitor's child just before it execs the first stage.
    pub fn pair() -> Result<(SyncSocket, SyncSocket)> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .ctx(|| "cannot create sync socket".into())?;
        Ok((SyncSocket(a), SyncSocket(b)))
    }

    /// Adopt an fd number given with `--sync-fd`. Refuses an fd that is not a socket, so a
    /// wrong number fails clearly instead of writing into someone else's file.
    pub fn from_raw(fd: RawFd) -> Result<SyncSocket> {
        let owned = crate::sys::adopt_fd(fd, "--sync-fd")?;
        let st = nix::sys::stat::fstat(&owned).ctx(|| format!("--sync-fd={fd}"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            // Not ours after all: leave it open for whoever owns it.
            let _ = owned.into_raw_fd();
            return Err(Error::invalid("--sync-fd", &fd.to_string(), "not a socket"));
        }
        Ok(SyncSocket(owned))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        self.send_raw(msg)
            .ctx(|| "cannot write to sync socket".into())
    }

    fn send_raw(&self, msg: &Msg) -> nix::Result<()> {
        let bytes = serde_json::to_vec(msg).expect("message serializes");
        nix::sys::socket::send(self.raw(), &bytes, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
            .map(drop)
    }

    /// [`SyncSocket::send`] to a peer that may be gone: `Ok(false)` when every copy of its
    /// end is closed (EPIPE, or ECONNRESET), not an error of ours: what it sent before it
    /// went is still queued for us (a stage's `Failed`, after its own line).
    pub fn send_if_open(&self, msg: &Msg) -> Result<bool> {
        use nix::errno::Errno;
        match self.send_raw(msg) {
            Ok(()) => Ok(true),
            Err(Errno::EPIPE | Errno::ECONNRESET) => Ok(false),
            Err(e) => Err(e).ctx(|| "cannot write to sync socket".into()),
        }
    }

    /// The next message, or `None` on EOF (every peer copy closed, or the peer died with
    /// our message unread: ECONNRESET). An attached fd is closed.
    pub fn recv(&self) -> Result<Option<Msg>> {
        Ok(self
            .recv_any(nix::sys::socket::MsgFlags::empty())?
            .map(|(m, _)| m))
    }

    /// A message already waiting, without blocking: `Ok(None)` when there is none.
    pub fn try_recv(&self) -> Result<Option<Msg>> {
        Ok(self.try_recv_any()?.map(|(m, _)| m))
    }

    /// [`SyncSocket::try_recv`], keeping an attached fd.
    pub fn try_recv_any(&self) -> Result<Option<(Msg, Option<OwnedFd>)>> {
        match self.recv_any(nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
            Err(e) if e.msg.ends_with(nix::errno::Errno::EAGAIN.desc()) => Ok(None),
            r => r,
        }
    }

    /// The next message and the fd attached to it, if any; `None` on EOF.
    pub fn recv_any(
        &self,
        flags: nix::sys::socket::MsgFlags,
    ) -> Result<Option<(Msg, Option<OwnedFd>)>> {
        use nix::errno::Errno;
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut buf = vec![0u8; 65536];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.raw(),
                &mut iov,
                Some(&mut cmsg),
                flags | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Ok(None),
                Err(e) => {
                    return Err(Error::setup(format!(
                        "cannot read sync socket: {}",
                        e.desc()
                    )))
                }
                Ok(r) if r.flags.contains(MsgFlags::MSG_TRUNC) => {
                    return Err(Error::setup(
                        "a message on the sync socket is too long".into(),
                    ))
                }
                Ok(r) => {
                    let mut fd = None;
                    for c in r
                        .cmsgs()
                        .ctx(|| "bad control message on sync socket".into())?
                    {
                        if let ControlMessageOwned::ScmRights(v) = c {
                            fd = v
                                .first()
                                .map(|f| crate::sys::adopt_fd(*f, "a sync message's fd"))
                                .transpose()?;
                        }
                    }
                    break (r.bytes, fd);
                }
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..n])
            .map_err(|e| Error::setup(format!("bad message on sync socket: {e}")))?;
        Ok(Some((msg, fd)))
    }

    /// Send a message with an fd attached (SCM_RIGHTS).
    pub fn send_fd(&self, msg: &Msg, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        let bytes = serde_json::to_vec(msg).expect("message serializes");
        send_with_fd(self.raw(), &bytes, fd).ctx(|| "cannot send an fd on the sync socket".into())
    }

    /// Receive a message that carries an fd.
    pub fn recv_fd(&self) -> Result<(Msg, OwnedFd)> {
        match self.recv_any(nix::sys::socket::MsgFlags::empty())? {
            Some((m, Some(fd))) => Ok((m, fd)),
            Some((m, None)) => Err(Error::setup(format!(
                "expected an fd with {m:?} on the sync socket"
            ))),
            None => Err(Error::setup("the sync socket closed".into())),
        }
    }

    /// Keep this end open across exec (it travels down the chain).
    pub fn set_inheritable(&self) -> Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(self.fd(), FcntlArg::F_SETFD(FdFlag::empty()))
            .ctx(|| "cannot clear close-on-exec on sync socket".into())?;
        Ok(())
    }

    /// Give up ownership without closing (the fd stays open for the next stage).
    pub fn into_raw(self) -> RawFd {
        use std::os::fd::IntoRawFd;
        self.0.into_raw_fd()
    }
}

/// `bytes` with `fd` attached (SCM_RIGHTS), in one message on the unix socket `socket`.
pub fn send_with_fd(
    socket: std::os::fd::RawFd,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(bytes)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_and_eof_is_none() {
        let (a, b) = SyncSocket::pair().unwrap();
        b.send(&Msg::Pid(42)).unwrap();
        b.send(&Msg::Failed {
            stage: "ns-mount".into(),
            code: crate::error::EXIT_SETUP,
            message: "x".into(),
        })
        .unwrap();
        assert_eq!(a.recv().unwrap(), Some(Msg::Pid(42)));
        assert!(matches!(
            a.recv().unwrap(),
            Some(Msg::Failed {
                code: crate::error::EXIT_SETUP,
                ..
            })
        ));
        drop(b);
        assert_eq!(a.recv().unwrap(), None);
    }

    #[test]
    fn from_raw_refuses_non_sockets() {
        use std::os::fd::IntoRawFd;
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let e = SyncSocket::from_raw(fd).unwrap_err();
        assert_eq!(e.msg, format!("--sync-fd={fd}: not a socket"));
        assert!(SyncSocket::from_raw(9999).is_err());
    }
}
