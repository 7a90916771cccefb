//! Every `unsafe` block of the toolkit lives here; stage crates `#![forbid(unsafe_code)]`.
//! Each function is a thin wrapper around one kernel effect, named for it.

use nix::errno::Errno;
use nix::unistd::Pid;

/// Which side of a fork or clone we are on.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2).
pub fn fork() -> nix::Result<Forked> {
    // SAFETY: the toolkit never starts threads (design rule: no threads anywhere in the
    // chain), so the child cannot inherit a lock held by another thread; it only execs or
    // runs async-signal-safe stage code before exec.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// clone(CLONE_PARENT): like fork, but the child becomes a child of *our* parent (the
/// monitor). ns-enter uses it so that the container's PID 1 is the monitor's direct child:
/// the monitor reaps it, and PR_SET_PDEATHSIG in it fires when the monitor dies, not when
/// ns-enter exits.
pub fn clone_parent() -> nix::Result<Forked> {
    // SAFETY: raw clone with a NULL stack behaves like fork (the child runs on a copy of our
    // stack); the process is single-threaded, as for `fork` above. No CLONE_VM, no TLS change.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match Errno::result(r)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// struct clone_args (linux/sched.h), CLONE_ARGS_SIZE_VER2: clone3's arguments.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3(CLONE_INTO_CGROUP): fork straight into the cgroup2 directory `cgroup`. Unlike a
/// later write to cgroup.procs, this does not take the cgroup_threadgroup_rwsem for writing,
/// whose RCU grace period costs milliseconds per start.
pub fn fork_into_cgroup(cgroup: std::os::fd::BorrowedFd<'_>) -> nix::Result<Forked> {
    use std::os::fd::AsRawFd;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: `args` lives across the call and its size is passed; no stack is given, so the
    // child runs on a copy of ours, exactly as with fork; single-threaded as for `fork`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(r)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Run this process only when a CPU would otherwise idle (SCHED_IDLE): for work that may
/// wait, such as removing a container's cgroups after its caller has the status, so that it
/// never competes with a container starting next.
pub fn idle_priority() -> nix::Result<()> {
    // SAFETY: sched_param is plain data (musl's has more fields than glibc's): all zero is
    // priority 0, which SCHED_IDLE requires.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: the system call on ourselves (pid 0) with a pointer to a live sched_param
    // (musl's sched_setscheduler only returns ENOSYS: it is per thread on Linux).
    let r = unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, libc::SCHED_IDLE, &param) };
    Errno::result(r).map(drop)
}

/// A program for [`spawn`] to exec: the fd of the file, and argv and envp as the C arrays
/// execveat takes, all made here, so that the child, which shares our memory, allocates
/// nothing.
pub struct Exec {
    fd: std::os::fd::RawFd,
    _strings: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Exec {
    pub fn new(
        fd: std::os::fd::RawFd,
        argv: Vec<std::ffi::CString>,
        env: Vec<std::ffi::CString>,
    ) -> Exec {
        let ptrs = |v: &[std::ffi::CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let (argv_p, envp) = (ptrs(&argv), ptrs(&env));
        let mut strings = argv;
        strings.extend(env);
        Exec {
            fd,
            _strings: strings,
            argv: argv_p,
            envp,
        }
    }
}

/// What the child of [`spawn`] reads (our memory, shared) and writes back: its exec's
/// errno when the exec fails.
#[repr(C)]
struct SpawnChild<'a> {
    exec: &'a Exec,
    mask: Option<&'a libc::sigset_t>,
    inheritable: std::os::fd::RawFd,
    errno: std::sync::atomic::AtomicI32,
    /// A forked child (a copy of our memory): where it writes its errno (a close-on-exec
    /// pipe, so that the parent reads EOF when the exec succeeds); -1 under CLONE_VM.
    report: std::os::fd::RawFd,
    /// A forked child where clone3 is refused: the cgroup2 directory it moves itself into
    /// (`cgroup.procs`) before the exec; -1 for none.
    join: std::os::fd::RawFd,
}

/// The child of [`spawn`], on its own stack in our memory: raw system calls only (no
/// allocation, no lock, nothing of ours changed but `errno`), then exec, or exit 127.
extern "C" fn spawn_child(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the SpawnChild that `spawn` keeps alive (on its stack) until we
    // exec or exit: vfork semantics, the parent waits until then.
    let c = unsafe { &*(arg as *const SpawnChild) };
    // SAFETY: raw system calls on plain data the parent prepared; none allocates.
    unsafe {
        let mut r = 0;
        if let Some(m) = c.mask {
            r = libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                m,
                0usize,
                8usize,
            );
        }
        if r == 0 && c.inheritable >= 0 {
            r = libc::syscall(libc::SYS_fcntl, c.inheritable, libc::F_SETFD, 0);
        }
        if r == 0 && c.join >= 0 {
            r = libc::syscall(
                libc::SYS_openat,
                c.join,
                c"cgroup.procs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if r >= 0 {
                let fd = r;
                r = match libc::syscall(libc::SYS_write, fd, c"0".as_ptr(), 1usize) {
                    1 => 0,
                    _ => -1,
                };
                libc::syscall(libc::SYS_close, fd);
            }
        }
        if r == 0 {
            r = libc::syscall(
                libc::SYS_execveat,
                c.exec.fd,
                c"".as_ptr(),
                c.exec.argv.as_ptr(),
                c.exec.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        // Only a failure returns here; errno is the caller's too (same memory).
        let _ = r;
        let errno = *libc::__errno_location();
        c.errno.store(errno, std::sync::atomic::Ordering::SeqCst);
        if c.report >= 0 {
            let b = errno.to_ne_bytes();
            libc::syscall(libc::SYS_write, c.report, b.as_ptr(), b.len());
        }
        libc::syscall(libc::SYS_exit_group, 127);
    }
    unreachable!("exit returned")
}

/// Start `exec` in a new process as fork then exec would, but without copying our memory:
/// clone(CLONE_VM|CLONE_VFORK), or clone3 straight into the cgroup2 directory `cgroup` when
/// given (CLONE_INTO_CGROUP, as [`fork_into_cgroup`]). The child takes `mask` as its signal mask
/// and clears close-on-exec on `inheritable`, then execs; we go on once it has (or has
/// failed: its exec's errno, the child reaped). A fork copies the page tables of a process
/// as large as ns-run's monitor, and every page either side writes after it faults (each a
/// trap to the hypervisor on a VM that shadows page tables); the exec then tears that copy
/// down again. Where clone3 is refused (a seccomp profile), and on other architectures: fork
/// then exec, as before.
pub fn spawn(
    exec: &Exec,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    mask: Option<&SignalSet>,
    inheritable: Option<std::os::fd::RawFd>,
) -> Result<Pid, SpawnError> {
    let mut child = SpawnChild {
        exec,
        mask: mask.map(|m| &m.0),
        inheritable: inheritable.unwrap_or(-1),
        errno: std::sync::atomic::AtomicI32::new(0),
        report: -1,
        join: -1,
    };
    let pid = match spawn_raw(&child, cgroup) {
        // clone3 refused (a seccomp profile's ENOSYS, as containerd's; an old kernel), or
        // another architecture: fork.
        Err(Errno::ENOSYS) | Err(Errno::EPERM) => return spawn_forked(&mut child, cgroup),
        r => r.map_err(SpawnError::Clone)?,
    };
    match child.errno.load(std::sync::atomic::Ordering::SeqCst) {
        0 => Ok(pid),
        e => {
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(SpawnError::Exec(Errno::from_raw(e)))
        }
    }
}

/// [`spawn`] by fork (the child a copy of our memory): its exec's errno comes back through
/// a close-on-exec pipe, read until EOF (the exec succeeded) or the errno.
fn spawn_forked(
    child: &mut SpawnChild,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Pid, SpawnError> {
    use std::os::fd::AsRawFd;
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Clone)?;
    child.report = tx.as_raw_fd();
    let forked = match cgroup.map(fork_into_cgroup) {
        // No clone3 at all: a plain fork, and the child joins the cgroup itself (which
        // takes the cgroup's rwsem for writing: slower, see fork_into_cgroup).
        Some(Err(Errno::ENOSYS)) | Some(Err(Errno::EPERM)) => {
            child.join = cgroup.map_or(-1, |c| c.as_raw_fd());
            fork()
        }
        Some(r) => r,
        None => fork(),
    };
    let pid = match forked.map_err(SpawnError::Clone)? {
        Forked::Parent(pid) => pid,
        Forked::Child => spawn_child(child as *const SpawnChild as *mut libc::c_void),
    };
    drop(tx);
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < b.len() {
        match nix::unistd::read(&rx, &mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got < b.len() {
        return Ok(pid);
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(SpawnError::Exec(Errno::from_raw(i32::from_ne_bytes(b))))
}

/// Why [`spawn`] failed: the clone (no child), or the child's exec (the child reaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    Clone(Errno),
    Exec(Errno),
}

#[cfg(target_arch = "x86_64")]
fn spawn_raw(child: &SpawnChild, cgroup: Option<std::os::fd::BorrowedFd<'_>>) -> nix::Result<Pid> {
    use std::os::fd::AsRawFd;
    const STACK: usize = 16 * 1024;
    // The child's stack, 16-byte aligned at its top (where the clone starts it), not
    // written here (the child touches a page or two); ours again once it has exec'd or
    // exited.
    let mut stack: Vec<u128> = Vec::with_capacity(STACK / 16);
    let vfork = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    let args = CloneArgs {
        flags: vfork | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: STACK as u64,
        cgroup: cgroup.map_or(0, |c| c.as_raw_fd() as u64),
        ..Default::default()
    };
    // clone3 only for CLONE_INTO_CGROUP; else the classic clone, which every kernel and
    // every seccomp profile that lets us fork has (Docker's default one fails clone3 with
    // ENOSYS, so that the C library falls back to clone). clone3 takes its arguments in
    // `args` (rdi, rsi); clone takes flags, the stack's top, then parent_tid, child_tid and
    // tls (rdi, rsi, rdx, r10, r8: none here).
    let (nr, a0, a1) = match cgroup {
        Some(_) => (
            libc::SYS_clone3,
            &args as *const CloneArgs as u64,
            std::mem::size_of::<CloneArgs>() as u64,
        ),
        None => (
            libc::SYS_clone,
            vfork | libc::SIGCHLD as u64,
            stack.as_mut_ptr() as u64 + STACK as u64,
        ),
    };
    let f: extern "C" fn(*mut libc::c_void) -> ! = spawn_child;
    let ret: i64;
    // SAFETY: clone3 or clone with CLONE_VM|CLONE_VFORK: the child runs
    // `spawn_child(child)` on `stack` (r12 and r13 survive the system call; the child's
    // frame pointer starts at 0, its stack aligned for the call) while we are suspended
    // until it execs or exits; `args`, `stack` and `child` outlive that. In the parent the
    // asm is a plain system call (rcx and r11 clobbered by `syscall`).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") nr => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") 0u64,
            in("r10") 0u64,
            in("r8") 0u64,
            in("r12") f,
            in("r13") child as *const SpawnChild as *mut libc::c_void,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    drop(stack);
    // A raw system call: -errno on failure (not -1 and errno, which Errno::result reads:
    // it took -EAGAIN for pid -11, which the caller's clean-up then killed as a process
    // group).
    match ret {
        -4095..=-1 => Err(Errno::from_raw(-ret as i32)),
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

/// Elsewhere: no clone3 with a stack of its own here; [`spawn`] forks instead.
#[cfg(not(target_arch = "x86_64"))]
fn spawn_raw(_: &SpawnChild, _: Option<std::os::fd::BorrowedFd<'_>>) -> nix::Result<Pid> {
    Err(Errno::ENOSYS)
}

/// One eBPF instruction (struct bpf_insn): opcode, dst and src registers (4 bits each),
/// offset, immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// bpf(BPF_PROG_LOAD) of a BPF_PROG_TYPE_CGROUP_DEVICE program, then bpf(BPF_PROG_ATTACH) of
/// it to the cgroup2 directory `cgroup` with BPF_F_ALLOW_MULTI (programs the guest attaches
/// below also run). The attachment holds the program until the cgroup is removed; the
/// returned error names which of the two calls failed.
pub fn attach_device_program(
    cgroup: std::os::fd::BorrowedFd<'_>,
    insns: &[BpfInsn],
) -> Result<(), (&'static str, Errno)> {
    use std::os::fd::AsRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    /// The leading fields of union bpf_attr for BPF_PROG_LOAD (the rest stay zero).
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    /// union bpf_attr for BPF_PROG_ATTACH.
    #[repr(C)]
    #[derive(Default)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        replace_bpf_fd: u32,
    }
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"ns_devices");
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"MIT OR Apache-2.0".as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: `load` and what it points to (the instructions, the license string) live
    // across the call, whose size argument is that of `load`; the result is a new fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    let prog = new_fd(Errno::result(r).map_err(|e| ("BPF_PROG_LOAD", e))? as i32);
    let attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: as above, for `attach`; both fds are open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    Errno::result(r)
        .map(drop)
        .map_err(|e| ("BPF_PROG_ATTACH", e))
}

/// renameat2(2) with `flags` (`libc::RENAME_NOREPLACE`, `RENAME_EXCHANGE`): nix offers it on
/// glibc only, and the musl the toolchain bundles has no wrapper: the system call itself.
pub fn renameat2<P: ?Sized + nix::NixPath, Q: ?Sized + nix::NixPath>(
    olddir: impl std::os::fd::AsFd,
    old: &P,
    newdir: impl std::os::fd::AsFd,
    new: &Q,
    flags: libc::c_uint,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let (od, nd) = (olddir.as_fd().as_raw_fd(), newdir.as_fd().as_raw_fd());
    let r = old.with_nix_path(|o| {
        new.with_nix_path(|n| {
            // SAFETY: both paths are NUL-terminated C strings that outlive the call.
            unsafe { libc::syscall(libc::SYS_renameat2, od, o.as_ptr(), nd, n.as_ptr(), flags) }
        })
    })??;
    Errno::result(r).map(drop)
}

/// The global allocator of the chain's stages (ns-enter, ns-mount, ns-caps; each installs
/// it): dlmalloc (the Rust port kept by the Rust project's own people, the allocator of
/// Rust's wasm targets), in place of musl's. musl's allocator gives each size class groups
/// of its own and unmaps a group as soon as it is empty: the three stages made ~100 mmap and
/// munmap calls per start, and the page faults of fresh pages over and over; with dlmalloc
/// 4, and a start takes 0.39 ms less (interleaved runs). dlmalloc takes memory from the
/// kernel in 64 KiB segments and keeps freed chunks for reuse, which suits a program that
/// runs for a millisecond. ns-run has [`StartupHeap`] instead: as a resident monitor it must
/// give its start-up memory back (66 KiB private per monitor on musl's allocator against 327
/// on dlmalloc, whose segments stay pinned by a few live chunks each). A spin lock makes it
/// safe to share;
/// none of the stages starts a thread, so it is never contended, and no signal handler of
/// theirs allocates.
pub struct Heap;

static HEAP_LOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static mut HEAP: dlmalloc::Dlmalloc = dlmalloc::Dlmalloc::new();

/// Run `f` on the heap, holding the lock.
fn with_heap<T>(f: impl FnOnce(&mut dlmalloc::Dlmalloc) -> T) -> T {
    use std::sync::atomic::Ordering;
    while HEAP_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: the lock is held: this is the only reference to HEAP until it is released.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(HEAP) });
    HEAP_LOCK.store(false, Ordering::Release);
    r
}

// SAFETY: each call is dlmalloc's own, with the layout's size and alignment as its contract
// asks (the pointers given back are the ones it returned for the same layout).
// The work is out of line (as [`StartupHeap`]'s): inlined at every allocation site,
// dlmalloc makes a stage's code larger, and a start pages more of it in.
unsafe impl std::alloc::GlobalAlloc for Heap {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        heap_alloc(l, false)
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        heap_alloc(l, true)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: GlobalAlloc::dealloc's contract, passed on.
        unsafe { heap_dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc::realloc's contract, passed on.
        unsafe { heap_realloc(p, l, new) }
    }
}

#[inline(never)]
fn heap_alloc(l: std::alloc::Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: dlmalloc's own calls with the layout's size and alignment.
    with_heap(|h| unsafe {
        match zeroed {
            true => h.calloc(l.size(), l.align()),
            false => h.malloc(l.size(), l.align()),
        }
    })
}

/// # Safety
/// `p` came from [`Heap`] with layout `l`.
#[inline(never)]
unsafe fn heap_dealloc(p: *mut u8, l: std::alloc::Layout) {
    // SAFETY: the caller's contract: `p` is dlmalloc's, allocated with `l`.
    with_heap(|h| unsafe { h.free(p, l.size(), l.align()) })
}

/// # Safety
/// `p` came from [`Heap`] with layout `l`; `new` is non-zero.
#[inline(never)]
unsafe fn heap_realloc(p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
    // SAFETY: the caller's contract: `p` is dlmalloc's, allocated with `l`.
    with_heap(|h| unsafe { h.realloc(p, l.size(), l.align(), new) })
}

/// ns-run's global allocator: dlmalloc over one arena while it starts a container, musl's
/// allocator afterwards. ns-run is short-lived work followed, for a running container, by a
/// resident monitor. On musl's allocator alone its start made ~75 mmap/munmap calls
/// (clap's command line growing, 64 KiB receive buffers), each group of a size class mapped
/// as it fills and unmapped as it empties; on dlmalloc alone (see [`Heap`]) a start is
/// faster, but the monitor keeps every segment a live chunk pins (327 KiB private against
/// 66–72). So: until [`finish_startup_heap`] every allocation comes from dlmalloc working
/// in one anonymous mapping of [`ARENA`] bytes (mapped at the first allocation, touched
/// only as used; what does not fit goes to musl's). A counter per page of the arena holds
/// how many live allocations overlap it. [`finish_startup_heap`] ends dlmalloc's use for
/// good: later allocations go to musl's, a start-up allocation freed later is only counted
/// down, and every arena page no live allocation overlaps is given back
/// (`MADV_DONTNEED`), then and whenever a later free empties one. Zeroing those pages is
/// safe because nothing reads dlmalloc's own records (free lists, chunk headers) after the
/// switch, and no live allocation's bytes lie on them. A spin lock guards dlmalloc and the
/// counters; ns-run starts no thread, so it is never contended.
pub struct StartupHeap;

/// The start-up arena's size. A plain start touches 48 pages of it (192 KiB) before the
/// switch, and 7 pages stay pinned by live allocations after it; more goes to musl's
/// allocator. The mapping is `MAP_NORESERVE`, only touched pages cost memory, and it is
/// smaller than a huge page, so that a host with transparent huge pages `always` never backs
/// it with one.
pub const ARENA: usize = 1 << 20;
const PAGE: usize = 4096; // x86_64
const PAGES: usize = ARENA / PAGE;

/// dlmalloc's source of memory: the arena, handed over whole at its first request;
/// nothing else (dlmalloc then fails, and [`StartupHeap`] falls back to musl's allocator).
struct Arena;

/// The arena's address once mapped (0 before).
static ARENA_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Set by [`finish_startup_heap`]: dlmalloc is not used any more.
static SWITCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// SAFETY: `alloc` returns either null or a fresh private mapping of the size it reports,
// never handed out twice (ARENA_BASE is set once, under the startup lock); every other
// method refuses (nothing is remapped, freed or released: the arena stays mapped for the
// process's lifetime). Fresh anonymous pages are zero, as `allocates_zeros` says.
unsafe impl dlmalloc::Allocator for Arena {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        use std::sync::atomic::Ordering;
        if size > ARENA || ARENA_BASE.load(Ordering::Relaxed) != 0 {
            return (std::ptr::null_mut(), 0, 0);
        }
        // SAFETY: a new anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return (std::ptr::null_mut(), 0, 0);
        }
        ARENA_BASE.store(p as usize, Ordering::Relaxed);
        (p.cast(), ARENA, 0)
    }
    fn remap(&self, _: *mut u8, _: usize, _: usize, _: bool) -> *mut u8 {
        std::ptr::null_mut()
    }
    fn free_part(&self, _: *mut u8, _: usize, _: usize) -> bool {
        false
    }
    fn free(&self, _: *mut u8, _: usize) -> bool {
        false
    }
    fn can_release_part(&self, _: u32) -> bool {
        false
    }
    fn allocates_zeros(&self) -> bool {
        true
    }
    fn page_size(&self) -> usize {
        PAGE
    }
}

/// What the startup lock guards.
struct Startup {
    dl: dlmalloc::Dlmalloc<Arena>,
    /// Live allocations overlapping each page of the arena.
    live: [u32; PAGES],
    /// Copy of SWITCHED, read under the lock.
    switched: bool,
}

static STARTUP_LOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static mut STARTUP: Startup = Startup {
    dl: dlmalloc::Dlmalloc::new_with_allocator(Arena),
    live: [0; PAGES],
    switched: false,
};

/// Run `f` on the start-up heap, holding its lock.
fn with_startup<T>(f: impl FnOnce(&mut Startup) -> T) -> T {
    use std::sync::atomic::Ordering;
    while STARTUP_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: the lock is held: this is the only reference to STARTUP until it is released.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(STARTUP) });
    STARTUP_LOCK.store(false, Ordering::Release);
    r
}

/// Whether `p` points into the arena (and its page index).
fn arena_page(p: *mut u8) -> Option<usize> {
    let base = ARENA_BASE.load(std::sync::atomic::Ordering::Relaxed);
    let off = (p as usize).wrapping_sub(base);
    (base != 0 && off < ARENA).then_some(off / PAGE)
}

/// Give back pages `[first, last)` of the arena.
fn discard_pages(first: usize, last: usize) {
    let base = ARENA_BASE.load(std::sync::atomic::Ordering::Relaxed);
    if first < last {
        // SAFETY: the range lies inside the arena mapping, and no live allocation overlaps
        // it (each page's counter is 0); dlmalloc's records there are never read again
        // (called only once `switched` is set). They come back zeroed if touched.
        unsafe {
            libc::madvise(
                (base + first * PAGE) as *mut libc::c_void,
                (last - first) * PAGE,
                libc::MADV_DONTNEED,
            )
        };
    }
}

impl Startup {
    /// The pages `[p, p + size)` overlaps.
    fn pages(p: *mut u8, size: usize) -> std::ops::Range<usize> {
        let base = ARENA_BASE.load(std::sync::atomic::Ordering::Relaxed);
        let off = p as usize - base;
        off / PAGE..(off + size.max(1) - 1) / PAGE + 1
    }
    fn track(&mut self, p: *mut u8, size: usize) {
        for i in Self::pages(p, size) {
            self.live[i] += 1;
        }
    }
    /// Count `[p, p + size)` down; after the switch, give back the pages it leaves empty.
    fn untrack(&mut self, p: *mut u8, size: usize) {
        let pages = Self::pages(p, size);
        let mut run = pages.start..pages.start;
        for i in pages {
            self.live[i] -= 1;
            if self.live[i] != 0 || !self.switched {
                discard_pages(run.start, run.end);
                run = i + 1..i + 1;
            } else {
                run.end = i + 1;
            }
        }
        discard_pages(run.start, run.end);
    }
    /// Allocate from dlmalloc (null once switched, or when the arena is full).
    fn alloc(&mut self, l: std::alloc::Layout, zeroed: bool) -> *mut u8 {
        if self.switched {
            return std::ptr::null_mut();
        }
        // SAFETY: dlmalloc's own calls with the layout's size and alignment.
        let p = unsafe {
            if zeroed {
                self.dl.calloc(l.size(), l.align())
            } else {
                self.dl.malloc(l.size(), l.align())
            }
        };
        if !p.is_null() {
            self.track(p, l.size());
        }
        p
    }
    /// Free an arena allocation: to dlmalloc before the switch, counted down after.
    fn free(&mut self, p: *mut u8, l: std::alloc::Layout) {
        self.untrack(p, l.size());
        if !self.switched {
            // SAFETY: `p` came from this dlmalloc with this layout (it lies in the arena).
            unsafe { self.dl.free(p, l.size(), l.align()) }
        }
    }
}

// SAFETY: an arena pointer always came from the start-up dlmalloc with the layout the caller
// gives back (only dlmalloc hands out arena addresses), any other from the system
// allocator with that layout; each is returned to the allocator it came from (or, after the
// switch, only counted down: dlmalloc is never called again). The work is out of line:
// inlined at every allocation site, dlmalloc made ns-run's code 315 KB larger.
unsafe impl std::alloc::GlobalAlloc for StartupHeap {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        startup_alloc(l, false)
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        startup_alloc(l, true)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: GlobalAlloc::dealloc's contract, passed on.
        unsafe { startup_dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc::realloc's contract, passed on.
        unsafe { startup_realloc(p, l, new) }
    }
}

/// [`StartupHeap`]'s alloc: from the arena until the switch (or while it has room), else
/// from the system allocator. `l` has a non-zero size (GlobalAlloc's contract).
#[inline(never)]
fn startup_alloc(l: std::alloc::Layout, zeroed: bool) -> *mut u8 {
    use std::alloc::GlobalAlloc;
    if !SWITCHED.load(std::sync::atomic::Ordering::Relaxed) {
        let p = with_startup(|s| s.alloc(l, zeroed));
        if !p.is_null() {
            return p;
        }
    }
    // SAFETY: `l` has a non-zero size.
    unsafe {
        if zeroed {
            std::alloc::System.alloc_zeroed(l)
        } else {
            std::alloc::System.alloc(l)
        }
    }
}

/// [`StartupHeap`]'s dealloc.
/// # Safety
/// `p` was allocated by [`StartupHeap`] with layout `l` and is not used afterwards.
#[inline(never)]
unsafe fn startup_dealloc(p: *mut u8, l: std::alloc::Layout) {
    use std::alloc::GlobalAlloc;
    match arena_page(p) {
        Some(_) => with_startup(|s| s.free(p, l)),
        // SAFETY: not an arena address: the system allocator gave it, with layout `l`.
        None => unsafe { std::alloc::System.dealloc(p, l) },
    }
}

/// [`StartupHeap`]'s realloc: in the arena while dlmalloc can (before the switch), else
/// moved to (or kept in) the system allocator.
/// # Safety
/// GlobalAlloc::realloc's: `p` was allocated by [`StartupHeap`] with layout `l`; `new` is
/// non-zero and, rounded up to `l.align()`, fits an isize.
#[inline(never)]
unsafe fn startup_realloc(p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
    use std::alloc::GlobalAlloc;
    if arena_page(p).is_none() {
        // SAFETY: not an arena address: the system allocator gave it, with layout `l`.
        return unsafe { std::alloc::System.realloc(p, l, new) };
    }
    let q = with_startup(|s| {
        if s.switched {
            return std::ptr::null_mut();
        }
        // SAFETY: `p` came from this dlmalloc with layout `l` (only it hands out arena
        // addresses), and dlmalloc is in use (not switched).
        let q = unsafe { s.dl.realloc(p, l.size(), l.align(), new) };
        if !q.is_null() {
            s.untrack(p, l.size());
            s.track(q, new);
        }
        q
    });
    if !q.is_null() {
        return q;
    }
    // Switched, or the arena is full (dlmalloc kept `p`): move it to the system allocator.
    // SAFETY: `new` is non-zero and, rounded up to the alignment, fits an isize (this
    // function's contract).
    let nl = unsafe { std::alloc::Layout::from_size_align_unchecked(new, l.align()) };
    // SAFETY: `nl` has a non-zero size.
    let q = unsafe { std::alloc::System.alloc(nl) };
    if !q.is_null() {
        // SAFETY: both are live and distinct, each at least min(old, new) bytes long.
        unsafe { std::ptr::copy_nonoverlapping(p, q, l.size().min(new)) };
        with_startup(|s| s.free(p, l));
    }
    q
}

/// Start-up is over ([`StartupHeap`]): every later allocation comes from the system
/// allocator, and the arena's pages that no live allocation overlaps go back to the kernel.
/// Harmless without the allocator installed (the arena was never mapped).
pub fn finish_startup_heap() {
    with_startup(|s| {
        if s.switched {
            return;
        }
        s.switched = true;
        SWITCHED.store(true, std::sync::atomic::Ordering::Relaxed);
        if ARENA_BASE.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let mut start = 0;
        for i in 0..=PAGES {
            if i == PAGES || s.live[i] != 0 {
                discard_pages(start, i);
                start = i + 1;
            }
        }
    })
}

/// Give the heap's free memory back to the kernel (the monitor, once set up, keeps only a
/// little of what start-up used, for the container's whole lifetime). glibc needs
/// malloc_trim(0) for that; musl's allocator unmaps freed groups by itself and has no such
/// call.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator to the kernel.
    unsafe {
        libc::malloc_trim(0)
    };
}

/// madvise(MADV_DONTNEED) on the part of the main thread's stack from `low` (the lowest
/// address of its mapping) up to a page below this function's frame: pages a deep start-up
/// touched that a shallow loop no longer uses (they come back zeroed if touched again).
#[inline(never)]
pub fn discard_stack_below_here(low: usize) -> nix::Result<()> {
    const PAGE: usize = 4096; // x86_64
    let here = 0u8;
    let here = std::hint::black_box(&here) as *const u8 as usize;
    let end = (here & !(PAGE - 1)).saturating_sub(PAGE);
    if low & (PAGE - 1) != 0 || end <= low {
        return Ok(());
    }
    // SAFETY: [low, end) lies below the current stack frame (by at least a page) and inside
    // the stack mapping: no live data is there (nothing runs on this stack below us; signals
    // are taken through a signalfd, no handler runs on it), so zeroing it loses nothing.
    let r = unsafe { libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED) };
    Errno::result(r).map(drop)
}

/// One classic BPF instruction (struct sock_filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// seccomp(SECCOMP_SET_MODE_FILTER): install `filter` for this process and everything it
/// execs or forks. Needs CAP_SYS_ADMIN in our user namespace, or no_new_privs.
pub fn seccomp_install(filter: &[SockFilter]) -> nix::Result<()> {
    seccomp_set_filter(filter, 0).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, `flags`, `filter`): what the call returns.
fn seccomp_set_filter(filter: &[SockFilter], flags: libc::c_uint) -> nix::Result<libc::c_long> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    let prog = SockFprog {
        len: u16::try_from(filter.len()).map_err(|_| Errno::E2BIG)?,
        filter: filter.as_ptr(),
    };
    // SAFETY: `prog` and the instructions it points to live across the call; the kernel
    // copies them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const SockFprog,
        )
    };
    Errno::result(r)
}

/// seccomp's return value that hands a call to the listener's agent.
pub const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;

/// [`seccomp_install`] with SECCOMP_FILTER_FLAG_NEW_LISTENER: the filter's listener fd (for
/// SECCOMP_RET_USER_NOTIF).
pub fn seccomp_install_listener(filter: &[SockFilter]) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
    let fd = seccomp_set_filter(filter, SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: `fd` was just returned to us by the kernel and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether this kernel's seccomp knows `action` (SECCOMP_GET_ACTION_AVAIL).
pub fn seccomp_action_available(action: u32) -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    // SAFETY: the kernel reads one u32 from a pointer to a live local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    r == 0
}

/// close_range(first, ~0, CLOSE_RANGE_CLOEXEC): every fd from `first` up closes at the next
/// successful exec, and stays usable until then (so an exec failure can still be reported).
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes fd flags; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    Errno::result(r).map(drop)
}

/// Close every fd from `first` up except those in `keep` (close_range over the gaps).
pub fn close_from_except(first: u32, keep: &[std::os::fd::RawFd]) -> nix::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|k| u32::try_from(*k).ok())
        .filter(|k| *k >= first)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let close = |lo: u32, hi: u32| {
        // SAFETY: close_range closes fds only; no memory is passed. Nothing of ours holds
        // these numbers any more (the caller's contract).
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
        Errno::result(r).map(drop)
    };
    let mut lo = first;
    for k in keep {
        if k > lo {
            close(lo, k - 1)?;
        }
        lo = k + 1;
    }
    close(lo, u32::MAX)
}

/// Bring the loopback interface of the current network namespace up (SIOCSIFFLAGS). The
/// kernel then gives it 127.0.0.1/8 and ::1 by itself.
pub fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into `req`, which lives for the whole call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which lives for the whole call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) }).map(drop)
}

/// Take ownership of an fd number that was handed to this process (`--sync-fd`,
/// `--root-fd`, `--state-fd`, or an fd received on the sync socket). `what` names where the
/// number came from; the error names it when the number is not an open fd.
pub fn adopt_fd(fd: std::os::fd::RawFd, what: &str) -> crate::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the fd's flags; any number is acceptable to the kernel.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(crate::Error::invalid(
            what,
            &fd.to_string(),
            "not an open file descriptor",
        ));
    }
    // SAFETY: the fd is open (checked above) and was handed to this process to own: no
    // object in it holds the number, so closing it on drop cannot close someone else's fd.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The fd a syscall of this file just returned: new, and ours alone.
fn new_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass only the result of a successful fd-creating syscall, which nothing
    // else in the process has seen.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// fcntl(F_DUPFD_CLOEXEC) of an fd number handed to this process (a stage fd): a duplicate
/// of our own, closed on exec.
pub fn dup_cloexec(fd: std::os::fd::RawFd) -> nix::Result<std::os::fd::OwnedFd> {
    dup_from(fd, libc::F_DUPFD_CLOEXEC, 0)
}

/// fcntl(`cmd`: F_DUPFD or F_DUPFD_CLOEXEC) of `fd`: a duplicate numbered `min` or more.
fn dup_from(
    fd: std::os::fd::RawFd,
    cmd: libc::c_int,
    min: libc::c_int,
) -> nix::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_DUPFD(_CLOEXEC) takes plain integers; the kernel returns a new fd or -1.
    let r = unsafe { libc::fcntl(fd, cmd, min) };
    Ok(new_fd(Errno::result(r)?))
}

/// `fd` itself, or where it is 0, 1 or 2 a duplicate numbered 3 or more (with its
/// close-on-exec flag): an fd that travels down the chain must never be a process's stdio.
pub fn above_stdio(fd: std::os::fd::OwnedFd) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let cloexec = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD)? & libc::FD_CLOEXEC;
    let cmd = match cloexec {
        0 => libc::F_DUPFD,
        _ => libc::F_DUPFD_CLOEXEC,
    };
    dup_from(fd.as_raw_fd(), cmd, 3)
}

/// pidfd_open(2): a pidfd (close-on-exec) for the process `pid` is now.
pub fn pidfd_open(pid: Pid) -> nix::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain integer arguments; the kernel returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0 as libc::c_uint) };
    Ok(new_fd(Errno::result(r)? as std::os::fd::RawFd))
}

/// pidfd_getfd(2): a duplicate, close-on-exec, of fd number `target` of the process
/// `pidfd` refers to (needs ptrace access to it).
pub fn pidfd_getfd(
    pidfd: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::RawFd,
) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain integer arguments (the pidfd is borrowed for the call); the kernel
    // installs a new fd in our table or returns -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            target,
            0 as libc::c_uint,
        )
    };
    Ok(new_fd(Errno::result(r)? as std::os::fd::RawFd))
}

/// Whether the file behind `fd` has the extended attribute `name` (fgetxattr(2) asked for
/// its size only). No attribute, or none supported there, is false.
pub fn has_xattr(fd: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr) -> nix::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a NUL-terminated name; a NULL buffer of size 0 asks for the value's size, so
    // the kernel writes nothing.
    let r = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) };
    match Errno::result(r) {
        Ok(_) => Ok(true),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}

/// execveat(fd, "", AT_EMPTY_PATH): run the binary behind an fd opened before the root
/// changed. Returns only on failure.
pub fn exec_fd(
    fd: std::os::fd::RawFd,
    args: &[std::ffi::CString],
    env: &[std::ffi::CString],
) -> Errno {
    // SAFETY: the fd number comes from NS_STAGE_FDS, which our own chain set up; it stays
    // open until the exec succeeds (the borrow does not outlive this call).
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::unistd::execveat(bfd, c"", args, env, nix::fcntl::AtFlags::AT_EMPTY_PATH).unwrap_err()
}

/// mount_setattr(2) on the mount `fd` is the root of (AT_EMPTY_PATH, plus AT_RECURSIVE for
/// every mount below it): set `attr_set`, with `userns` for MOUNT_ATTR_IDMAP.
fn mount_setattr(
    fd: std::os::fd::BorrowedFd<'_>,
    recursive: bool,
    attr_set: u64,
    userns: Option<std::os::fd::BorrowedFd<'_>>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `attr` is a properly laid out struct mount_attr that outlives the call, its
    // size is passed alongside; the path is a valid empty C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Make the mount `fd` is the root of (and, if recursive, every mount below it) read-only,
/// keeping its other flags.
pub fn mount_setattr_rdonly(fd: std::os::fd::BorrowedFd<'_>, recursive: bool) -> nix::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    mount_setattr(fd, recursive, MOUNT_ATTR_RDONLY, None)
}

/// A signal set that can hold real-time signals too (nix's `Signal` cannot name them).
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn new(signals: &[i32]) -> SignalSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t for both calls.
        unsafe {
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
        }
        SignalSet(set)
    }

    fn mask(&self, how: libc::c_int) -> nix::Result<SignalSet> {
        let mut old = SignalSet::new(&[]);
        // SAFETY: both pointers are valid sigset_t for the duration of the call.
        let r = unsafe { libc::pthread_sigmask(how, &self.0, &mut old.0) };
        Errno::result(r).map(|_| old)
    }

    /// Block these signals, to take them from a signalfd or sigtimedwait; returns the
    /// previous mask. SIGCHLD's disposition goes back to the default first: one ignored by
    /// whoever started us (`trap '' CHLD`, inherited across exec) has the kernel reap our
    /// children itself and send no SIGCHLD at all, and we would wait forever.
    pub fn block(&self) -> nix::Result<SignalSet> {
        // SAFETY: sigismember reads the set; SIG_DFL runs no handler code.
        if unsafe { libc::sigismember(&self.0, libc::SIGCHLD) } == 1
            && unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR
        {
            return Err(Errno::last());
        }
        self.mask(libc::SIG_BLOCK)
    }

    /// Make this the signal mask (to restore one returned by `block`).
    pub fn set_mask(&self) -> nix::Result<()> {
        self.mask(libc::SIG_SETMASK).map(drop)
    }

    /// A signalfd for these (blocked) signals, close-on-exec and non-blocking: for a process
    /// that polls other fds too.
    pub fn signalfd(&self) -> nix::Result<nix::sys::signalfd::SignalFd> {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        // SAFETY: `self.0` was initialised by sigemptyset and filled by sigaddset.
        let set = unsafe { nix::sys::signal::SigSet::from_sigset_t_unchecked(self.0) };
        SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    }

    /// Wait for one of these (blocked) signals; returns its number.
    pub fn wait(&self) -> nix::Result<i32> {
        loop {
            // SAFETY: the set is valid; a NULL siginfo pointer is allowed.
            let r = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
            match Errno::result(r) {
                Err(Errno::EINTR) => continue,
                r => return r,
            }
        }
    }
}

impl SignalSet {
    /// Take one of these (blocked) signals if one is pending, without waiting: a long job
    /// that blocked them checks now and then whether to stop and clean up.
    pub fn poll(&self) -> Option<i32> {
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the set and the timespec are valid for the call; a NULL siginfo pointer
        // is allowed. A zero timeout makes sigtimedwait return at once.
        let r = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &now) };
        (r > 0).then_some(r)
    }
}

/// Make `cmd`'s process start with no blocked signal and every signal at its default
/// disposition: a child inherits its parent's mask and ignored signals across exec (the
/// monitors block the signals they relay; a parent's posix_spawn leaves the C library's
/// internal signals ignored in its child, us, and so in ours).
pub fn clean_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and makes only the
    // rt_sigaction and sigprocmask system calls, which are async-signal-safe; it allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            default_dispositions()?;
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// Every signal but SIGKILL and SIGSTOP (1 to 64) back to its default disposition, through
/// rt_sigaction itself: the C library refuses the numbers it keeps for its own use (glibc
/// 32-33, musl 32-34), and a caller may have ignored those too. Only system calls: safe
/// between fork and exec.
fn default_dispositions() -> std::io::Result<()> {
    // The kernel's struct sigaction (x86-64 and arm64 layout): handler, flags, restorer,
    // mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signo in 1..=crate::SIGRTMAX {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no handler code; `dfl` is a complete kernel
        // sigaction of the size given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signo,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// kill(2) with any signal number, real-time ones included.
pub fn kill_raw(pid: Pid, signo: i32) -> nix::Result<()> {
    // SAFETY: kill takes plain integers.
    Errno::result(unsafe { libc::kill(pid.as_raw(), signo) }).map(drop)
}

/// What a payload must start with: every signal at its default disposition and none
/// blocked. An ignored disposition survives exec: SIGPIPE, which our stages ignore, and
/// whatever the caller of ns-run ignored (`nohup` ignores SIGHUP, a shell's `trap ''`); as
/// systemd-nspawn and runc do, none of it reaches the container.
pub fn reset_signals_for_exec() -> nix::Result<()> {
    // Nothing else in this single-threaded process depends on a disposition after this
    // point (the next step is exec).
    default_dispositions().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    SignalSet::new(&[]).set_mask()
}

/// Die of SIGPIPE, as a program that never ignored it (coreutils) does when it writes to a
/// closed pipe: the Rust runtime ignores SIGPIPE, so we put the default back and raise it.
pub fn die_of_sigpipe() -> ! {
    use nix::sys::signal::{raise, SigSet, Signal};
    // SAFETY: installing SIG_DFL runs no handler code; the process is about to end.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    let _ = set.thread_unblock();
    let _ = raise(Signal::SIGPIPE);
    std::process::exit(128 + libc::SIGPIPE)
}

/// open_tree(path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE]): a detached copy of
/// the mount at `path` (with its submounts if `recursive`), to be changed and attached
/// elsewhere.
pub fn open_tree_clone(
    path: &std::path::Path,
    recursive: bool,
) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    open_tree(libc::AT_FDCWD, &p, 0, recursive)
}

/// The same for what `fd` is open on (an O_PATH fd opened without following symlinks):
/// the file or directory itself, never a path resolved again.
pub fn open_tree_clone_fd(
    fd: std::os::fd::BorrowedFd<'_>,
    recursive: bool,
) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    open_tree(
        fd.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH as libc::c_uint,
        recursive,
    )
}

fn open_tree(
    dirfd: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    recursive: bool,
) -> nix::Result<std::os::fd::OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = flags
        | OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | if recursive { 0x8000 } else { 0 };
    // SAFETY: `path` is a valid C string for the call; the returned fd is new and ours.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    Errno::result(r).map(|fd| new_fd(fd as std::os::fd::RawFd))
}

/// One parameter of a file system context ([`fs_mount`]).
pub enum FsParam<'a> {
    /// A flag option (`ro`).
    Flag(&'a str),
    /// `key=value`.
    Str(&'a str, &'a str),
    /// `key` set to an open file (FSCONFIG_SET_FD: proc's `pidns`).
    Fd(&'a str, std::os::fd::BorrowedFd<'a>),
}

/// Attributes of a new mount ([`fs_mount`]), MOUNT_ATTR_*.
pub const MOUNT_ATTR_RDONLY: u32 = 0x1;
pub const MOUNT_ATTR_NOSUID: u32 = 0x2;
pub const MOUNT_ATTR_NODEV: u32 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u32 = 0x8;

/// fsopen(`fstype`), the parameters, FSCONFIG_CMD_CREATE, fsmount: a new file system as a
/// detached mount with `attrs` (`MOUNT_ATTR_*`), to attach with [`move_mount_to`]. Made by
/// the caller's credentials, in its namespaces (the monitor's: the host's).
pub fn fs_mount(
    fstype: &std::ffi::CStr,
    params: &[FsParam<'_>],
    attrs: u32,
) -> crate::Result<std::os::fd::OwnedFd> {
    use crate::error::Context;
    use std::os::fd::AsRawFd;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_SET_FD: libc::c_uint = 5;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    let name = fstype.to_string_lossy();
    // SAFETY: `fstype` is a valid C string; the returned fd is new and ours.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), 1 as libc::c_uint) };
    let ctx = new_fd(Errno::result(r).ctx(|| format!("cannot open a {name} context"))? as i32);
    let cstr = |s: &str| std::ffi::CString::new(s).map_err(|_| Errno::EINVAL);
    let config = |cmd: libc::c_uint,
                  key: Option<&str>,
                  value: Option<&str>,
                  aux: libc::c_int|
     -> nix::Result<()> {
        let (k, v) = (key.map(cstr).transpose()?, value.map(cstr).transpose()?);
        let ptr =
            |c: &Option<std::ffi::CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: the context fd is ours; key and value are valid C strings or NULL, and
        // `aux` an fd we hold or 0, as `cmd` requires; the kernel copies them (or takes its
        // own reference to the file) during the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                ctx.as_raw_fd(),
                cmd,
                ptr(&k),
                ptr(&v),
                aux,
            )
        };
        Errno::result(r).map(drop)
    };
    for p in params {
        let (what, r) = match p {
            FsParam::Flag(k) => (*k, config(FSCONFIG_SET_FLAG, Some(k), None, 0)),
            FsParam::Str(k, v) => (*k, config(FSCONFIG_SET_STRING, Some(k), Some(v), 0)),
            FsParam::Fd(k, fd) => (*k, config(FSCONFIG_SET_FD, Some(k), None, fd.as_raw_fd())),
        };
        r.ctx(|| format!("{name}: cannot set {what}"))?;
    }
    config(FSCONFIG_CMD_CREATE, None, None, 0)
        .ctx(|| format!("cannot create the {name} file system"))?;
    // SAFETY: the context fd is ours and created; the returned fd is new and ours.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), 1 as libc::c_uint, attrs) };
    Ok(new_fd(
        Errno::result(r).ctx(|| format!("cannot mount the {name} file system"))? as i32,
    ))
}

/// Make the detached mount `fd` show files through the id mapping of `userns`
/// (MOUNT_ATTR_IDMAP).
pub fn mount_setattr_idmap(
    fd: std::os::fd::BorrowedFd<'_>,
    userns: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    mount_setattr(fd, false, MOUNT_ATTR_IDMAP, Some(userns))
}

/// move_mount(fd, "", to, "", F_EMPTY_PATH | T_EMPTY_PATH): attach the detached mount `fd`
/// on the directory or file `to` is open on.
pub fn move_mount_to(
    fd: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: both paths are valid (empty) C strings; the fds are borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// Whether we run in a user namespace (as runc tells: a uid map other than the identity).
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// Drop every supplementary group, where the user namespace lets anyone: EPERM is taken as
/// a namespace whose setgroups is denied (a rootless one, whose maps its own user wrote: the
/// groups held are that user's, which all its processes hold too). Never decided by reading
/// /proc/self/setgroups: a process that joined a container's mount namespace from outside
/// its PID namespace has no /proc/self there, and the container's root can put a /proc of
/// its own making there that says `deny`.
pub fn clear_groups() -> nix::Result<()> {
    match nix::unistd::setgroups(&[]) {
        Err(Errno::EPERM) => Ok(()),
        r => r,
    }
}

/// Unlock a pty master (TIOCSPTLCK 0) and return its slave's number (TIOCGPTN).
pub fn pty_unlock(master: std::os::fd::BorrowedFd<'_>) -> nix::Result<u32> {
    use std::os::fd::AsRawFd;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, valid for the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to the pointer, valid for the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// Make the terminal `fd` our controlling terminal (TIOCSCTTY; we must lead a session).
pub fn set_controlling_tty(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSCTTY takes an int argument by value; no memory is passed.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// A terminal's window size (TIOCGWINSZ).
pub fn window_size(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<libc::winsize> {
    use std::os::fd::AsRawFd;
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok(ws)
}

/// Set a terminal's window size (TIOCSWINSZ); its foreground job gets SIGWINCH.
pub fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, ws: &libc::winsize) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSWINSZ reads the struct behind the pointer, valid for the call.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) }).map(drop)
}

/// dup2(from, to): `to` becomes a copy of `from` (without close-on-exec).
pub fn dup_to(from: std::os::fd::RawFd, to: std::os::fd::RawFd) -> nix::Result<()> {
    // SAFETY: dup2 takes plain fd numbers; replacing `to` (stdin/out/err here) is the point.
    Errno::result(unsafe { libc::dup2(from, to) }).map(drop)
}

/// The C `main` of ns-run and the chain's stages, in place of the Rust runtime's (the
/// binary's crate is `#![no_main]`; `$run` never returns). The runtime's start-up costs
/// each exec ~17 system calls and ~35k instructions, mostly for a stack-overflow handler: it
/// reads and parses /proc/self/maps (glibc's pthread_getattr_np) and maps a signal stack.
/// What matters of the rest stays ([`runtime_start`]); a stack overflow is then a plain
/// SIGSEGV instead of a message and SIGABRT. The arguments are kept for [`args_os`]
/// (std::env::args is empty without the runtime's start-up on musl); the environment is
/// the C library's, as before.
/// The binary's unit tests (`cargo test` builds it with the test harness's `main`) keep the
/// runtime: there the crate is `#![cfg_attr(not(test), no_main)]` and this defines no `main`.
#[macro_export]
macro_rules! stage_main {
    ($run:path) => {
        // SAFETY: the program's one `main` symbol (the crate is `#![no_main]`), with C's
        // signature; it takes no pointer it reads.
        #[cfg(not(test))]
        #[no_mangle]
        extern "C" fn main(argc: i32, argv: *const *const ::std::ffi::c_char) -> i32 {
            // SAFETY: argc and argv are the C start-up's, valid for the whole program.
            unsafe { $crate::sys::keep_args(argc, argv) };
            $crate::sys::runtime_start();
            $run()
        }
        // Under the test harness the stage's entry is still compiled (and so still used).
        #[cfg(test)]
        const _: fn() -> ! = $run;
    };
}

static ARGC: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static ARGV: std::sync::atomic::AtomicPtr<*const std::ffi::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Keep `main`'s arguments for [`args_os`] ([`stage_main`] calls it first thing).
///
/// # Safety
/// `argv` must point to `argc` NUL-terminated strings that stay valid and unchanged for the
/// rest of the program (the C start-up's arguments on the initial stack are).
pub unsafe fn keep_args(argc: i32, argv: *const *const std::ffi::c_char) {
    ARGV.store(argv.cast_mut(), std::sync::atomic::Ordering::Relaxed);
    ARGC.store(
        usize::try_from(argc).unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The program's arguments: those [`stage_main`]'s `main` was given, else (a normal Rust
/// `main`, a test) std's.
pub fn args_os() -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    let argv = ARGV.load(std::sync::atomic::Ordering::Relaxed);
    if argv.is_null() {
        return std::env::args_os().collect();
    }
    let argc = ARGC.load(std::sync::atomic::Ordering::Relaxed);
    (0..argc)
        .map(|i| {
            // SAFETY: keep_args' contract: argc valid C strings at argv, for good.
            let c = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            std::ffi::OsStr::from_bytes(c.to_bytes()).to_owned()
        })
        .collect()
}

/// What the Rust runtime's start-up does that our binaries rely on, for [`stage_main`]: fds 0-2
/// open (a closed one becomes /dev/null, so that no file the stage opens takes its number and
/// gets its error messages or its payload's output), and SIGPIPE ignored (a write to a closed
/// pipe fails with EPIPE; see [`crate::stage::quiet_on_closed_pipe`]). Where a closed one
/// cannot be filled (no /dev/null to open), the program aborts, as the Rust runtime does:
/// left free, the number would go to the next fd opened, such as a stage binary's O_PATH fd
/// that travels down the chain, and so reach the payload as its stdio (a container root could
/// then write our host binary through /proc/self/fd).
pub fn runtime_start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes only the three pollfds of `fds`, whose length it is given.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    for p in fds
        .iter()
        .filter(|p| r < 0 || p.revents & libc::POLLNVAL != 0)
    {
        // SAFETY: F_GETFD on a plain number reads no memory (poll failing is the rare case).
        if unsafe { libc::fcntl(p.fd, libc::F_GETFD) } < 0 {
            let null = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            );
            // It takes the lowest free number, this one: kept open for good.
            match null {
                Ok(fd) if std::os::fd::AsRawFd::as_raw_fd(&fd) == p.fd => std::mem::forget(fd),
                _ => std::process::abort(),
            }
        }
    }
    // SAFETY: SIG_IGN runs no handler code; no thread exists yet.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
}

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// struct loop_config (linux/loop.h, LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// A free loop device number (LOOP_CTL_GET_FREE on /dev/loop-control, which makes one if
/// none is free).
pub fn loop_get_free(control: std::os::fd::BorrowedFd<'_>) -> nix::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let r = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _, 0) };
    Errno::result(r).map(|n| n as u32)
}

/// LOOP_CONFIGURE the loop device `dev` to serve `backing` from byte `offset` on, `size`
/// bytes of it (0: to the end), read-only when asked, with autoclear: the device detaches
/// itself once its last user (this fd, a mount of it) is gone, so no exit path leaves it
/// attached. `name` is what losetup shows. EBUSY: another process took the device first.
pub fn loop_configure(
    dev: std::os::fd::BorrowedFd<'_>,
    backing: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    size: u64,
    read_only: bool,
    name: &[u8],
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let mut lo_file_name = [0u8; 64];
    let n = name.len().min(63);
    lo_file_name[..n].copy_from_slice(&name[..n]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: size,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 },
            lo_file_name,
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised struct loop_config that outlives the call;
    // the kernel only reads it and takes its own reference to the backing file.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
    Errno::result(r).map(drop)
}

/// EXT4_IOC_RESIZE_FS: grow the mounted ext4 file system whose directory `fd` is to
/// `blocks` blocks (online resize).
pub fn ext4_resize(fd: std::os::fd::BorrowedFd<'_>, blocks: u64) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610; // _IOW('f', 16, __u64)
                                                           // SAFETY: the ioctl reads one u64 that outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &blocks) };
    Errno::result(r).map(drop)
}

/// BTRFS_IOC_RESIZE to "max": grow the mounted btrfs whose directory `fd` is to its whole
/// device.
pub fn btrfs_resize_max(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    /// struct btrfs_ioctl_vol_args.
    #[repr(C)]
    struct VolArgs {
        fd: i64,
        name: [u8; 4088],
    }
    const BTRFS_IOC_RESIZE: libc::c_ulong = 0x5000_9403; // _IOW(0x94, 3, vol_args)
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    args.name[..3].copy_from_slice(b"max");
    // SAFETY: the ioctl reads the struct, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), BTRFS_IOC_RESIZE as _, &args) };
    Errno::result(r).map(drop)
}

/// struct dm_ioctl (linux/dm-ioctl.h), the header of every device-mapper request.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

/// struct dm_target_spec.
#[repr(C)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}

const DM_HEADER: usize = std::mem::size_of::<DmIoctl>();
const DM_READONLY_FLAG: u32 = 1;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// _IOWR(0xfd, nr, struct dm_ioctl).
const fn dm_cmd(nr: u64) -> u64 {
    (3 << 30) | ((DM_HEADER as u64) << 16) | (0xfd << 8) | nr
}

/// One device-mapper request on /dev/mapper/control: header `h` and `payload` after it;
/// returns the header as the kernel filled it in.
fn dm_request(
    control: std::os::fd::BorrowedFd<'_>,
    nr: u64,
    mut h: DmIoctl,
    payload: &[u8],
) -> nix::Result<DmIoctl> {
    use std::os::fd::AsRawFd;
    // Room for the kernel's answer too (DM_DEV_CREATE returns nothing beyond the header).
    let mut buf = vec![0u8; DM_HEADER + payload.len() + 64];
    h.version = [4, 0, 0];
    h.data_size = buf.len() as u32;
    h.data_start = DM_HEADER as u32;
    // SAFETY: DmIoctl is plain old data; `buf` holds at least DM_HEADER bytes.
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast::<DmIoctl>(), h) };
    buf[DM_HEADER..DM_HEADER + payload.len()].copy_from_slice(payload);
    // SAFETY: the request is a dm_ioctl header followed by its payload, `data_size` bytes
    // in all, which the kernel reads and writes back within that size.
    let r = unsafe { libc::ioctl(control.as_raw_fd(), dm_cmd(nr) as _, buf.as_mut_ptr()) };
    Errno::result(r)?;
    // SAFETY: as above; the kernel wrote a header back.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<DmIoctl>()) })
}

fn dm_header(name: &str) -> DmIoctl {
    let mut h = DmIoctl {
        version: [4, 0, 0],
        data_size: 0,
        data_start: 0,
        target_count: 0,
        open_count: 0,
        flags: 0,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    let n = name.len().min(127);
    h.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    h
}

/// A read-only device-mapper device `name` with one target `target` (e.g. `verity`) of
/// `sectors` 512-byte sectors and `params`, activated; returns its device number.
/// On a failure after it was created it is removed again.
pub fn dm_create_readonly(
    control: std::os::fd::BorrowedFd<'_>,
    name: &str,
    target: &str,
    sectors: u64,
    params: &str,
) -> nix::Result<u64> {
    const DM_DEV_CREATE: u64 = 3;
    const DM_DEV_SUSPEND: u64 = 6;
    const DM_TABLE_LOAD: u64 = 9;
    let created = dm_request(control, DM_DEV_CREATE, dm_header(name), &[])?;
    let load = || -> nix::Result<()> {
        let mut spec = DmTargetSpec {
            sector_start: 0,
            length: sectors,
            status: 0,
            next: 0,
            target_type: [0; 16],
        };
        let t = target.len().min(15);
        spec.target_type[..t].copy_from_slice(&target.as_bytes()[..t]);
        let spec_len = std::mem::size_of::<DmTargetSpec>();
        // The spec, its NUL-terminated parameters, padded to 8 bytes.
        let mut payload = vec![0u8; (spec_len + params.len() + 1).div_ceil(8) * 8];
        // SAFETY: DmTargetSpec is plain old data; `payload` holds at least its size.
        unsafe { std::ptr::write_unaligned(payload.as_mut_ptr().cast::<DmTargetSpec>(), spec) };
        payload[spec_len..spec_len + params.len()].copy_from_slice(params.as_bytes());
        let mut h = dm_header(name);
        h.target_count = 1;
        h.flags = DM_READONLY_FLAG;
        dm_request(control, DM_TABLE_LOAD, h, &payload)?;
        // Resume (no DM_SUSPEND_FLAG): the loaded table goes live.
        dm_request(control, DM_DEV_SUSPEND, dm_header(name), &[]).map(drop)
    };
    match load() {
        Ok(()) => Ok(created.dev),
        Err(e) => {
            let _ = dm_remove(control, name, false);
            Err(e)
        }
    }
}

/// Remove the device-mapper device `name`; `deferred`: once its last user (a mount) is
/// gone, as a loop device's autoclear.
pub fn dm_remove(
    control: std::os::fd::BorrowedFd<'_>,
    name: &str,
    deferred: bool,
) -> nix::Result<()> {
    const DM_DEV_REMOVE: u64 = 4;
    let mut h = dm_header(name);
    if deferred {
        h.flags = DM_DEFERRED_REMOVE;
    }
    dm_request(control, DM_DEV_REMOVE, h, &[]).map(drop)
}

/// keyctl(KEYCTL_INVALIDATE, `serial`): the key is gone for everyone at once.
pub fn invalidate_key(serial: i64) -> nix::Result<()> {
    const KEYCTL_INVALIDATE: libc::c_long = 21;
    // SAFETY: plain integers.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, serial) };
    Errno::result(r).map(drop)
}

/// keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new anonymous session keyring for this process
/// (and what it execs), so that it does not share the caller's (nspawn's outer child and runc
/// do the same). Returns the new keyring's serial.
pub fn join_new_session_keyring() -> nix::Result<i64> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a null name asks for an anonymous keyring; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    Errno::result(r)
}

/// add_key("user", `desc`, `payload`, the session keyring): a key for the kernel to read
/// (a root hash signature that dm-verity checks); returns its serial.
pub fn add_user_key(desc: &std::ffi::CStr, payload: &[u8]) -> nix::Result<i64> {
    const KEY_SPEC_SESSION_KEYRING: i32 = -3;
    // SAFETY: type and description are NUL-terminated; the payload slice is valid for its
    // length; the kernel copies all of them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_SESSION_KEYRING,
        )
    };
    Errno::result(r)
}

/// mount --make-rslave /: nothing mounted in this mount namespace from now on reaches the
/// one it was copied from, while that one's new mounts still propagate in.
pub fn make_rslave() -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
}

/// FS_IOC_GETFLAGS: the inode flags (`FS_IMMUTABLE_FL`...) of the file `fd` is open on.
pub fn inode_flags(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601; // _IOR('f', 1, long)
    let mut flags: libc::c_int = 0;
    // SAFETY: the kernel writes one int (the flags are an int whatever the ioctl's number
    // says) into `flags`, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
    Errno::result(r).map(|_| flags)
}

/// FS_IOC_SETFLAGS: set the inode flags of the file `fd` is open on.
pub fn set_inode_flags(fd: std::os::fd::BorrowedFd<'_>, flags: libc::c_int) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602; // _IOW('f', 2, long)
                                                        // SAFETY: the kernel reads one int from `flags`, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_SETFLAGS as _, &flags) };
    Errno::result(r).map(drop)
}

/// FICLONE: make the file `dst` is open on share all of `src`'s extents (a reflink: btrfs,
/// xfs; EOPNOTSUPP or EXDEV elsewhere).
pub fn reflink(
    dst: std::os::fd::BorrowedFd<'_>,
    src: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409; // _IOW(0x94, 9, int)
                                                // SAFETY: the argument is an fd number, passed by value.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;

    /// An fd that would be stdout (fd 1 closed, the next open takes it) is moved to 3 or
    /// more, keeps its close-on-exec flag, and number 1 stays free. In a forked child, so
    /// that the test harness keeps its own stdio.
    #[test]
    fn a_stage_fd_never_takes_a_stdio_number() {
        match fork().unwrap() {
            Forked::Child => {
                let ok = nix::unistd::close(1).is_ok()
                    && [OFlag::O_RDONLY, OFlag::O_RDONLY | OFlag::O_CLOEXEC]
                        .into_iter()
                        .all(|flags| {
                            let Ok(fd) = nix::fcntl::open("/dev/null", flags, Mode::empty()) else {
                                return false;
                            };
                            let took_1 = fd.as_raw_fd() == 1;
                            let cloexec = flags.contains(OFlag::O_CLOEXEC);
                            let Ok(moved) = above_stdio(fd) else {
                                return false;
                            };
                            let flag = nix::fcntl::fcntl(&moved, nix::fcntl::FcntlArg::F_GETFD);
                            took_1
                                && moved.as_raw_fd() > 2
                                && flag.is_ok_and(|f| (f & libc::FD_CLOEXEC != 0) == cloexec)
                                // SAFETY: F_GETFD on a plain number reads no memory.
                                && unsafe { libc::fcntl(1, libc::F_GETFD) } < 0
                        });
                // SAFETY: _exit ends the forked child without running the harness's code.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            Forked::Parent(child) => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    /// Arena pages resident (mincore).
    fn arena_resident() -> usize {
        let base = ARENA_BASE.load(std::sync::atomic::Ordering::Relaxed);
        let mut v = vec![0u8; PAGES];
        // SAFETY: the arena is one mapping of ARENA bytes; `v` has a byte per page.
        let r = unsafe { libc::mincore(base as *mut libc::c_void, ARENA, v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().filter(|b| **b & 1 != 0).count()
    }

    #[test]
    fn the_startup_heap_moves_to_the_system_allocator_and_gives_its_pages_back() {
        // The test binary's own allocator is the system's; this drives StartupHeap by hand
        // (the only test that does: its switch is for the whole process).
        use std::alloc::{GlobalAlloc, Layout};
        let h = StartupHeap;
        let small = Layout::from_size_align(40, 8).unwrap();
        let big = Layout::from_size_align(65536, 1).unwrap();
        // SAFETY: every pointer is used within its layout and freed once, with that layout.
        unsafe {
            let mut ps: Vec<*mut u8> = (0..200).map(|_| h.alloc(small)).collect();
            assert!(ps.iter().all(|p| arena_page(*p).is_some()));
            let b = h.alloc_zeroed(big);
            assert!(arena_page(b).is_some());
            assert!(std::slice::from_raw_parts(b, 65536).iter().all(|x| *x == 0));
            for (i, p) in ps.iter().enumerate() {
                p.write_bytes(i as u8, 40);
            }
            // Grown in the arena, contents kept.
            let g = h.realloc(ps[0], small, 5000);
            assert!(arena_page(g).is_some());
            assert!(std::slice::from_raw_parts(g, 40).iter().all(|x| *x == 0));
            ps[0] = g;
            h.dealloc(b, big);
            for p in ps.drain(100..) {
                h.dealloc(p, small);
            }
            let before = arena_resident();
            finish_startup_heap();
            assert!(arena_resident() < before, "free pages given back");
            // After the switch: new allocations from the system, arena ones moved out.
            let n = h.alloc(small);
            assert!(arena_page(n).is_none());
            h.dealloc(n, small);
            let m = h.realloc(ps[1], small, 100);
            assert!(arena_page(m).is_none());
            assert!(std::slice::from_raw_parts(m, 40).iter().all(|x| *x == 1));
            h.dealloc(m, Layout::from_size_align(100, 8).unwrap());
            let g = Layout::from_size_align(5000, 8).unwrap();
            h.dealloc(ps[0], g);
            for p in ps.drain(2..) {
                h.dealloc(p, small);
            }
            assert!(with_startup(|s| s.live.iter().all(|c| *c == 0)));
            assert_eq!(arena_resident(), 0, "every page given back");
        }
    }
}
