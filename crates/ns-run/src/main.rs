//! ns-run: systemd-nspawn's command line, composed from the ns-* stages.
//!
//! Parses nspawn's options into one state (plan.rs), then either prints it (`--print-state`),
//! prints the equivalent chain of stages (`--print-chain`), or becomes the monitor and runs
//! the chain ns-enter → ns-mount → ns-caps [→ ns-init] → payload (monitor.rs).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), no_main)]

mod monitor;

use ns_core::exec::args_utf8;
use ns_core::stage::run;
use ns_core::state::State;
use ns_core::Result;
use ns_host::cgroups::Hierarchy;
use ns_run::{cli, oci, plan, settings};

const STAGE: &str = "ns-run";

ns_core::stage_main!(start);

/// dlmalloc over one arena while a container starts, musl's allocator once the monitor only
/// waits (see ns_core::sys::StartupHeap; the switch is in monitor.rs's shed_startup_memory).
#[cfg(not(test))]
#[global_allocator]
static HEAP: ns_core::sys::StartupHeap = ns_core::sys::StartupHeap;

fn start() -> ! {
    run(STAGE, || {
        let (state, hierarchies, image) = plan_from_args()?;
        // `-i`: mounted in our own mount namespace, which must be gone when we exit.
        let in_background = image.is_none();
        // `-i`: the image's lock is the container's (the monitor drops it at its end).
        if let Some(log) = &state.monitor.log_file {
            // From here on, the console and our messages go to the log.
            ns_core::logfile::redirect(log)?;
        }
        let ended = monitor::run(&state, hierarchies, image.and_then(|i| i.lock))?;
        ended.exit(in_background)
    })
}

/// `-i`, or `-M NAME` finding `NAME.raw` where no directory image NAME is: the disk image,
/// locked and mounted in a mount namespace of our own (ns_host::image), and the options
/// pointed at its tree as if it were `-D`. nspawn's conflicts are checked first, so that a
/// bad command line mounts nothing.
fn mount_image(cli: &mut cli::Cli) -> Result<Option<ns_host::image::Mounted>> {
    // `-M NAME` of an image made read-only (`ns-ctl read-only`) runs read-only, as nspawn's.
    if let (None, None, Some(m)) = (&cli.image, &cli.mount.directory, &cli.machine) {
        let found = ns_core::paths::find_image(m).or_else(|| ns_core::paths::find_raw_image(m));
        cli.mount.read_only |= found.is_some_and(|p| ns_core::paths::image_read_only(&p));
    }
    let found = match (&cli.image, &cli.mount.directory, &cli.machine) {
        (Some(i), _, _) => Some(std::path::PathBuf::from(i)),
        (None, None, Some(m)) if ns_core::paths::find_image(m).is_none() => {
            ns_core::paths::find_raw_image(m)
        }
        _ => None,
    };
    let Some(path) = found else {
        return Ok(None);
    };
    // `-M NAME` finding NAME.raw is `-i` from here on (its conflicts too: --template).
    cli.image = Some(path.to_string_lossy().into_owned());
    plan::check_options(cli)?;
    let shown = path.to_string_lossy().into_owned();
    let verity = ns_host::verity::find(
        &path,
        cli.root_hash.as_deref(),
        cli.root_hash_sig.as_deref(),
        cli.verity_data.as_deref(),
    )
    .map_err(|why| ns_core::Error::invalid("--image", &shown, &why))?;
    let m = &cli.mount;
    let volatile = m.volatile.as_deref().is_some_and(|v| !plan::is_false(v));
    let on_top = m.ephemeral || volatile;
    // A container that never writes to the image gets it read-only, down to its loop
    // devices (and shares it with others).
    use ns_host::image::Use;
    let how = match (cli.print_state || cli.print_chain, m.read_only || on_top) {
        (true, _) => Use::Print,
        (false, true) => Use::Read,
        (false, false) => Use::Write,
    };
    let mounted = ns_host::image::mount_image(&path, how, verity.as_ref())?;
    cli.image_mounted = true;
    cli.mount.directory = Some(mounted.root.to_string_lossy().into_owned());
    // An image that cannot be written is run read-only (unless an overlay takes writes).
    cli.mount.read_only |= mounted.read_only && !on_top;
    Ok(Some(mounted))
}

/// What planning hands the monitor: the state, the host's cgroup hierarchies if read, the
/// disk image mounted for `-i` (held until the container is gone).
type Planned = (
    Box<State>,
    Option<Vec<Hierarchy>>,
    Option<ns_host::image::Mounted>,
);

/// The state from the command line (and settings, an OCI bundle), what the plan read of
/// the host's cgroups; `--print-state`, `--print-chain` and `--template` done. Its own frame
/// (not inlined into main): parsing's and planning's locals and heap are gone, not under the
/// monitor's loop, for the container's lifetime (issue 19's memory goal).
#[inline(never)]
fn plan_from_args() -> Result<Planned> {
    // nspawn's command line, built once for everything below and dropped with the plan.
    let mut cmd = cli::command();
    let argv = cli::normalize(&cmd, &args_utf8()?)?;
    let cli = cli::parse(&mut cmd, &argv);
    if cli.help || cli.help_all {
        cli::print_help(cli.help_all);
        std::process::exit(0);
    }
    // An OCI bundle is options too (and what options cannot say, applied below).
    let bundle = match &cli.oci_bundle {
        Some(dir) => Some(oci::load("--oci-bundle", std::path::Path::new(dir))?),
        None => None,
    };
    // A .nspawn file adds options (or replaces some): parse the merged line again.
    let merged = match &bundle {
        Some(b) => {
            let name = cli.machine.clone().unwrap_or_else(|| {
                let base = b.dir.file_name().unwrap_or_default().to_string_lossy();
                plan::hostname_cleanup(&base)
            });
            oci::merge(&cmd, &argv, b, &name)?
        }
        None => settings::merge(&cmd, &argv, &cli)?,
    };
    let mut cli: cli::Cli = if merged == argv {
        cli
    } else {
        ns_core::stage::debug(STAGE, || format!("with settings: {merged:?}"));
        cli::parse(&mut cmd, &merged)
    };
    drop(cmd);
    let image = mount_image(&mut cli)?;
    let facts = plan::HostFacts::gather(&cli);
    let oci = bundle.as_ref().map(|bundle| oci::OciInput {
        bundle,
        oci_runtime: None,
    });
    let state = plan::build(&cli, &facts, oci.as_ref())?;
    if cli.print_state {
        ns_core::outln!("{}", state.to_json_pretty());
        std::process::exit(0);
    }
    if cli.print_chain {
        ns_core::outln!("{}", plan::chain(&state));
        std::process::exit(0);
    }
    if let Some(t) = &cli.template {
        // nspawn: a missing -D directory is created from the template (checked by build).
        ns_mount::template::instantiate(std::path::Path::new(t), &state.mount.root)?;
    }
    Ok((Box::new(state), facts.cgroups, image))
}
