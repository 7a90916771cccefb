//! ns-mount: build the container's root and pivot into it. See lib.rs for the contract.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), no_main)]

use ns_core::exec::{args_utf8, chain_stages, exec_next, next_program, StageFds};
use ns_core::stage::{adopt_sync, debug, run, stage_args};
use ns_core::state::{Runtime, State};
use ns_mount::Args;

const STAGE: &str = "ns-mount";

ns_core::stage_main!(stage);

/// dlmalloc, not musl's allocator: fewer system calls for a program that runs once per start
/// (see ns_core::sys::Heap).
#[cfg(not(test))]
#[global_allocator]
static HEAP: ns_core::sys::Heap = ns_core::sys::Heap;

fn stage() -> ! {
    run(STAGE, || {
        let argv = args_utf8()?;
        let args: Args = stage_args(STAGE, &argv, Args::set_fds);
        // Kept open (not dropped) for ns-caps, the next stage.
        let sync = adopt_sync(args.sync_fd)?;
        let (plan, runtime) = match args.state_fd {
            Some(fd) => {
                let state = State::from_state_fd(fd)?;
                (state.mount, state.runtime)
            }
            None => (args.to_plan()?, Runtime::default()),
        };
        let rest = next_program(&args.rest, args.state_fd, args.sync_fd, "ns-caps")?;
        // Open the stages still to come while our binaries are reachable.
        let mut fds = StageFds::from_env()?;
        fds.open_missing(&chain_stages(&rest))?;
        debug(STAGE, || format!("building root {}", plan.root.display()));
        let root_fd = args.root_fd.map(adopt_root_fd).transpose()?;
        ns_mount::build(&plan, &runtime, sync.as_ref(), root_fd)?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        Err(exec_next(&rest, &fds))
    })
}

/// `--root-fd`: the idmapped image ns-enter hands us, an open directory above stderr. A
/// number that is not one is refused and left open: it may be another's (the sync socket).
fn adopt_root_fd(fd: std::os::fd::RawFd) -> ns_core::Result<std::os::fd::OwnedFd> {
    use std::os::fd::IntoRawFd;
    let bad = || {
        ns_core::Error::invalid(
            "--root-fd",
            &fd.to_string(),
            "not an open directory above stderr",
        )
    };
    let owned = match fd {
        0..=2 => return Err(bad()),
        _ => ns_core::sys::adopt_fd(fd, "--root-fd").map_err(|_| bad())?,
    };
    match nix::sys::stat::fstat(&owned) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(owned),
        _ => {
            let _ = owned.into_raw_fd();
            Err(bad())
        }
    }
}
