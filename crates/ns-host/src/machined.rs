//! Registration with systemd-machined, when the system bus has it (nspawn's `--register=yes`),
//! so that `machinectl` lists and drives ns-run's containers. Over [`crate::dbus`], from the
//! monitor only (it never unshares).
//!
//! How the container sits in systemd's tree: as nspawn with `--keep-unit`, always. With
//! `--keep-unit` the unit is the one ns-run runs in (`ns-run@NAME.service`); otherwise the
//! monitor first asks systemd for a scope of its own, `machine-NAME.scope` in machine.slice
//! (or the `-S` slice), `Delegate=yes`, with itself in it. Either way the monitor then moves
//! to the unit's `supervisor` sub-cgroup (cgroup2 allows no processes beside cgroups with
//! controllers), the container's two levels go beside it in the unit, and the container's
//! PID 1 is registered as the leader with `RegisterMachineWithNetwork` (machined finds the
//! unit from the leader's cgroup). At exit `UnregisterMachine`; a monitor that is killed
//! leaves an empty scope, which systemd collects with the machine.

use crate::dbus::{Bus, Message, Value};
use ns_core::{Error, Result};

const BUS: &str = "org.freedesktop.DBus";
const MACHINED: &str = "org.freedesktop.machine1";
const MACHINED_PATH: &str = "/org/freedesktop/machine1";
const MACHINED_MANAGER: &str = "org.freedesktop.machine1.Manager";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// D-Bus errors that mean "nobody provides machined here": registration is skipped.
const ABSENT: &[&str] = &[
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.systemd1.NoSuchUnit",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
];

/// A machined reachable on the system bus, with the machine's name checked as free.
pub struct Machined {
    bus: Bus,
    name: String,
    /// Our scope's unit, once made: we stop it at exit.
    scope: Option<String>,
    /// What the messages that came told.
    watch: Watch,
}

/// What the monitor learns from the messages that come, whenever they come (while it waits
/// for a reply too).
#[derive(Default)]
struct Watch {
    /// systemd's unique name on the bus: signals are believed only from it (any client may
    /// send a signal straight to us). It changes when systemd re-executes
    /// ([`from_systemd`] follows it).
    systemd: String,
    /// Our scope's object path, once asked for: systemd asks us (its controller) to stop it.
    scope_path: Option<String>,
    /// systemd asked us to stop our scope (`machinectl terminate`, a shutdown), not yet
    /// acted on.
    stop: bool,
}

impl Watch {
    /// Take note of `m`; whether it comes from systemd.
    fn note(&mut self, m: &Message) -> bool {
        let from = from_systemd(&mut self.systemd, m);
        self.stop |= from
            && m.kind == crate::dbus::SIGNAL
            && m.member.as_deref() == Some("RequestStop")
            && m.path.is_some()
            && m.path == self.scope_path;
        from
    }
}

fn machined_call(member: &str, body: Vec<Value>) -> Message {
    let mut m = Message::call(MACHINED, MACHINED_PATH, MACHINED_MANAGER, member);
    m.body = body;
    m
}

impl Machined {
    /// machined, if the system bus has one (no bus: one failed connect, nothing else), and
    /// the machine `name` is not registered there yet (else an error naming it).
    pub fn reach(name: &str) -> Result<Option<Machined>> {
        let Some(mut bus) = Bus::system()? else {
            return Ok(None);
        };
        check_name(name)?;
        let reply = bus.call(machined_call("GetMachine", vec![Value::Str(name.into())]))?;
        match reply {
            Ok(_) => Err(Error::setup(format!(
                "machine {name} is already registered with systemd-machined (choose another \
                 name with -M, or --register=no)"
            ))),
            Err(e) if e.name == "org.freedesktop.machine1.NoSuchMachine" => Ok(Some(Machined {
                bus,
                name: name.into(),
                scope: None,
                watch: Watch::default(),
            })),
            Err(e) if ABSENT.contains(&e.name.as_str()) => Ok(None),
            Err(e) => Err(Error::setup(format!("systemd-machined: {e}"))),
        }
    }

    /// A match rule added (`add`) or removed on the bus.
    fn match_rule(&mut self, add: bool, rule: String) -> Result<()> {
        let member = if add { "AddMatch" } else { "RemoveMatch" };
        let mut m = Message::call(BUS, "/org/freedesktop/DBus", BUS, member);
        m.body = vec![Value::Str(rule)];
        self.call(m)?
            .map_err(|e| Error::setup(format!("D-Bus {member}: {e}")))?;
        Ok(())
    }

    /// Call `m` and wait (bounded) for its reply, noting the messages that come meanwhile.
    fn call(&mut self, m: Message) -> Result<crate::dbus::Reply> {
        let watch = &mut self.watch;
        self.bus.call_seeing(m, |s| {
            watch.note(s);
        })
    }

    /// Move ourselves into a scope of our own (`machine-NAME.scope`, in `slice`, a unit
    /// name), as systemd's other container managers get one, with us as its controller
    /// (systemd asks us to stop it: [`Machined::stop_requested`]), and wait until systemd
    /// has started it.
    pub fn own_scope(&mut self, slice: &str) -> Result<String> {
        let unit = format!("machine-{}.scope", unit_escape(&self.name));
        self.match_rule(
            true,
            format!(
                "type='signal',sender='{BUS}',path='/org/freedesktop/DBus',interface='{BUS}',\
                 member='NameOwnerChanged',arg0='{SYSTEMD}'"
            ),
        )?;
        let mut m = Message::call(BUS, "/org/freedesktop/DBus", BUS, "GetNameOwner");
        m.body = vec![Value::Str(SYSTEMD.into())];
        let owner = (self.call(m)?).map_err(|e| Error::setup(format!("systemd: {e}")))?;
        self.watch.systemd = owner.first().and_then(Value::as_str).unwrap_or("").into();
        let path = format!("{SYSTEMD_PATH}/unit/{}", bus_path_escape(&unit));
        self.watch.scope_path = Some(path.clone());
        self.match_rule(
            true,
            format!(
                "type='signal',sender='{SYSTEMD}',path='{path}',\
                 interface='org.freedesktop.systemd1.Scope',member='RequestStop'"
            ),
        )?;
        let mut m = Message::call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "StartTransientUnit");
        let props = vec![
            Value::property(
                "Description",
                Value::Str(format!("Container {}", self.name)),
            ),
            Value::property("Slice", Value::Str(slice.into())),
            Value::property("Delegate", Value::Bool(true)),
            Value::property("CollectMode", Value::Str("inactive-or-failed".into())),
            Value::property("Controller", Value::Str(self.bus.unique_name.clone())),
            Value::property(
                "PIDs",
                Value::Array("u".into(), vec![Value::U32(std::process::id())]),
            ),
        ];
        m.body = vec![
            Value::Str(unit.clone()),
            Value::Str("fail".into()),
            Value::Array("(sv)".into(), props),
            Value::Array("(sa(sv))".into(), Vec::new()),
        ];
        match self.job(m, &format!("create {unit}"))?.as_str() {
            "done" => {
                self.scope = Some(unit.clone());
                Ok(unit)
            }
            r => Err(Error::setup(format!(
                "cannot start {unit}: its job ended {r}"
            ))),
        }
    }

    /// Call `m` (a systemd method that queues a job: to `what`) and wait (bounded) until the
    /// job is over: its result (`done`, `failed`...).
    fn job(&mut self, m: Message, what: &str) -> Result<String> {
        let jobs = format!(
            "type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',\
             interface='{SYSTEMD_MANAGER}',member='JobRemoved'"
        );
        self.match_rule(true, jobs.clone())?;
        let reply = (self.call(m)?).map_err(|e| Error::setup(format!("cannot {what}: {e}")))?;
        let job = reply
            .first()
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // JobRemoved(u id, o job, s unit, s result) for our job.
        let watch = &mut self.watch;
        let done = self.bus.wait_signal(|s| {
            watch.note(s)
                && s.member.as_deref() == Some("JobRemoved")
                && s.body.get(1).and_then(Value::as_str) == Some(&job)
        })?;
        self.match_rule(false, jobs)?;
        Ok(done
            .body
            .get(3)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .into())
    }

    /// Register the container: `leader` (its PID 1 on the host), `uuid` (hex, dashes
    /// optional: machined wants its 16 bytes), its root directory and host-side interfaces.
    /// machined finds the unit from the leader's cgroup.
    pub fn register(
        &mut self,
        leader: i32,
        uuid: &str,
        root: &str,
        ifindices: &[i32],
    ) -> Result<()> {
        let id = uuid_bytes(uuid);
        let body = vec![
            Value::Str(self.name.clone()),
            Value::Array("y".into(), id.into_iter().map(Value::Byte).collect()),
            Value::Str("ns-run".into()),
            Value::Str("container".into()),
            Value::U32(leader as u32),
            Value::Str(root.into()),
            Value::Array(
                "i".into(),
                ifindices.iter().map(|i| Value::I32(*i)).collect(),
            ),
        ];
        let m = machined_call("RegisterMachineWithNetwork", body);
        self.call(m)?.map_err(|e| {
            Error::setup(format!(
                "cannot register machine {} with systemd-machined: {e}",
                self.name
            ))
        })?;
        Ok(())
    }
}

impl Machined {
    /// The bus connection, to poll: [`Machined::stop_requested`] once it is readable.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self.bus.stream())
    }

    /// Whether systemd asked us to stop our scope (`machinectl terminate`, a shutdown): seen
    /// already (while a call was on), or the next message. An error: the bus is gone.
    pub fn stop_requested(&mut self) -> Result<bool> {
        if !self.watch.stop {
            if let Some(m) = self.bus.receive()? {
                self.watch.note(&m);
            }
        }
        Ok(self.stop_pending())
    }

    /// The monitor stays in our scope (its cgroups before are gone): the scope is not stopped
    /// at exit (it could not stop while the monitor is in it); systemd stops it once the
    /// monitor is gone.
    pub fn stay_in_scope(&mut self) {
        self.scope = None;
    }

    /// Whether systemd asked us to stop our scope while a call was on (nothing is read).
    pub fn stop_pending(&mut self) -> bool {
        std::mem::take(&mut self.watch.stop)
    }

    /// The monitor's last word: our scope stopped (it holds nothing by now) and waited for,
    /// so that the name is free again at once for the next container, and the machine
    /// dropped from machined if `registered` (errors are of no use then).
    pub fn release(mut self, registered: bool) {
        if let Some(unit) = self.scope.take() {
            let mut m = Message::call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "StopUnit");
            m.body = vec![Value::Str(unit.clone()), Value::Str("replace".into())];
            let _ = self.job(m, &format!("stop {unit}"));
        }
        if registered {
            let m = machined_call("UnregisterMachine", vec![Value::Str(self.name.clone())]);
            let _ = self.bus.call(m);
        }
    }
}

/// Whether `m` comes from systemd, whose unique name is `systemd`: kept up to date from the
/// bus's own NameOwnerChanged for org.freedesktop.systemd1 (`systemctl daemon-reexec`, as an
/// upgrade of systemd runs, reconnects it under a new name: its stop requests came from a
/// name not believed). Only the bus sends as `org.freedesktop.DBus`.
fn from_systemd(systemd: &mut String, m: &Message) -> bool {
    let arg = |i: usize| m.body.get(i).and_then(Value::as_str);
    if m.kind == crate::dbus::SIGNAL
        && m.sender.as_deref() == Some(BUS)
        && m.member.as_deref() == Some("NameOwnerChanged")
        && arg(0) == Some(SYSTEMD)
    {
        *systemd = arg(2).unwrap_or("").into();
        return false;
    }
    !systemd.is_empty() && m.sender.as_deref() == Some(systemd.as_str())
}

/// An object path element as sd-bus escapes it: `[A-Za-z0-9]` as they are, every other
/// byte as `_XX` (lower-case hex).
fn bus_path_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b.is_ascii_alphanumeric() {
            true => (b as char).to_string(),
            false => format!("_{b:02x}"),
        })
        .collect()
}

/// Drop machine `name` from machined, if it still has it, over a new connection (the
/// monitor's last word when it lost its own; errors are of no use then).
pub fn unregister_by_name(name: &str) {
    if let Ok(Some(mut bus)) = Bus::system() {
        let _ = bus.call(machined_call(
            "UnregisterMachine",
            vec![Value::Str(name.into())],
        ));
    }
}

/// machined's rule for a machine name (a valid hostname of at most 64 characters), checked
/// before anything is made.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match ok {
        true => Ok(()),
        false => Err(Error::setup(format!(
            "machine name {name} is not one systemd-machined takes (a hostname of at most 64 \
             characters; or --register=no)"
        ))),
    }
}

/// systemd's unit-name escaping of one path element: `-` and anything outside
/// `[A-Za-z0-9:_.]` as `\xNN`, and a leading `.` too.
pub fn unit_escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b":_".contains(&b) || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A uuid's 16 bytes (empty when it is not one: machined then picks none).
fn uuid_bytes(uuid: &str) -> Vec<u8> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Vec::new();
    }
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// The host-side ifindex of each named interface that exists.
pub fn ifindices(names: &[String]) -> Vec<i32> {
    names
        .iter()
        .filter_map(|n| {
            std::fs::read_to_string(format!("/sys/class/net/{n}/ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_are_escaped_as_systemd_does() {
        assert_eq!(unit_escape("inner"), "inner");
        assert_eq!(unit_escape("ns-tests-1"), "ns\\x2dtests\\x2d1");
        assert_eq!(unit_escape(".x.y"), "\\x2ex.y");
    }

    #[test]
    fn unit_paths_are_escaped_as_sd_bus_does() {
        // busctl tree org.freedesktop.systemd1 in the guest.
        assert_eq!(
            bus_path_escape("machine-inner.scope"),
            "machine_2dinner_2escope"
        );
    }

    fn signal(sender: &str, member: &str, body: &[&str]) -> Message {
        Message {
            kind: crate::dbus::SIGNAL,
            sender: Some(sender.into()),
            member: Some(member.into()),
            body: body.iter().map(|s| Value::Str(s.to_string())).collect(),
            ..Message::default()
        }
    }

    /// systemd re-executed: the bus says org.freedesktop.systemd1 has a new owner, whose
    /// signals are believed from then on, the old one's no longer; the same news from any
    /// other client changes nothing.
    #[test]
    fn systemds_new_name_is_followed_as_the_bus_says() {
        let mut systemd = ":1.0".to_string();
        let stop = |from: &str| signal(from, "RequestStop", &[]);
        assert!(from_systemd(&mut systemd, &stop(":1.0")));
        let moved = |from: &str| signal(from, "NameOwnerChanged", &[SYSTEMD, ":1.0", ":1.4"]);
        assert!(!from_systemd(&mut systemd, &moved(":1.9")));
        assert_eq!(systemd, ":1.0");
        assert!(!from_systemd(&mut systemd, &moved(BUS)));
        assert_eq!(systemd, ":1.4");
        assert!(from_systemd(&mut systemd, &stop(":1.4")));
        assert!(!from_systemd(&mut systemd, &stop(":1.0")));
        // Gone (no owner): nothing is from systemd.
        let gone = signal(BUS, "NameOwnerChanged", &[SYSTEMD, ":1.4", ""]);
        assert!(!from_systemd(&mut systemd, &gone));
        assert!(!from_systemd(&mut systemd, &signal("", "RequestStop", &[])));
    }

    /// systemd asks us to stop the scope (a shutdown, `systemctl stop`) while the monitor
    /// waits for machined's answer to the registration: the request is kept, not dropped
    /// with the other messages that came meanwhile (the scope then waited its 90 s stop
    /// timeout, seen once in six starts with RuntimeMaxSec=1ms: failed before).
    #[test]
    fn a_stop_request_during_a_call_is_kept() {
        use std::io::Write;
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let path = "/org/freedesktop/systemd1/unit/machine_2dt_2escope";
        let bus = std::thread::spawn(move || {
            let call = crate::dbus::testing::next(&mut theirs);
            let mut stop = signal(":1.0", "RequestStop", &[]);
            stop.path = Some(path.into());
            let reply = Message {
                kind: crate::dbus::METHOD_RETURN,
                reply_serial: Some(call.serial),
                ..Message::default()
            };
            theirs.write_all(&stop.encode(7)).unwrap();
            theirs.write_all(&reply.encode(8)).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(1));
            call.member
        });
        let mut m = Machined {
            bus: crate::dbus::testing::bus_over(ours, std::time::Duration::from_secs(5)),
            name: "t".into(),
            scope: Some("machine-t.scope".into()),
            watch: Watch {
                systemd: ":1.0".into(),
                scope_path: Some(path.into()),
                stop: false,
            },
        };
        m.register(7, "", "/", &[]).unwrap();
        assert!(matches!(m.stop_requested(), Ok(true)));
        assert_eq!(
            bus.join().unwrap().as_deref(),
            Some("RegisterMachineWithNetwork")
        );
    }

    #[test]
    fn uuids_become_16_bytes() {
        let b = uuid_bytes("0a15e88c-54bc-4539-b79a-151f2128de24");
        assert_eq!(b.len(), 16);
        assert_eq!((b[0], b[15]), (0x0a, 0x24));
        assert_eq!(uuid_bytes("0a15e88c54bc4539b79a151f2128de24"), b);
        assert!(uuid_bytes("nope").is_empty());
    }

    #[test]
    fn names_machined_refuses_are_refused_first() {
        assert!(check_name("web-1.example").is_ok());
        let long = "a".repeat(65);
        let e = check_name(&long).unwrap_err();
        assert!(
            e.msg.starts_with(&format!("machine name {long} is not")),
            "{e}"
        );
        assert!(check_name("a..b").is_err());
    }
}
