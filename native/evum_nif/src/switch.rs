//! The switch as the BEAM holds it: a resource per switch, attached ports
//! that deliver frames to pids, and inspection as terms.
//!
//! Frames for an attached port arrive as `{evum_frame, Switch, Port, Frame}`,
//! Switch being the evum_switch process that owns the switch.

use std::sync::Mutex;
use std::time::Duration;

use crate::atom_map;
use evum_core::switch::{
    EventSink, Fault, FrameSink, Impairment, Link, Mac, PortId, PortKind, Switch, SwitchConfig, SwitchEvent,
};
use evum_core::vm::jail::{self, HeldId};
use evum_core::vm::placement::{choice_set, CpuChoice};
use rustler::{Binary, Encoder, Env, LocalPid, NewBinary, NifResult, OwnedEnv, ResourceArc, Term};

mod atoms {
    rustler::atoms! {
        ok, error, evum_frame, switch, not_running, daemon, bess, attached, undefined,
        id, kind, mac, frames_in, frames_out, bytes_in, bytes_out, drops_queue_full,
        drops_send_error, queued, port, age_ms,
        bad_magic, bad_version, bad_type, bad_address, duplicate_address, short_request,
        oversized_request, request_timeout, too_many_pending, too_many_ports, control_garbage, runt,
        oversized_frame, bad_option, foreign_peer, foreign_address, mac_table_full,
        drops_rate, drops_storm, drops_spoofed, drops_mac_limit, drops_guard, infinity,
        max_hold_ms, max_macs, mac_table_size, storm_limit, port_rate, port_security,
        drops_nemesis, partition, heal, cut, restore, groups, cuts,
        all, capture, unknown_capture, frames, bytes, missed,
        to, pair, loss, loss_burst, delay_us, jitter_us, duplicate, reorder, corrupt, rate, clean, link,
        settings, lost, duplicated, corrupted, reordered, overflow, held, seed,
        evum_switch_event, port_up, port_down, mac_moved, events_dropped, evum_capture,
    }
}

/// A switch; dropping the last reference stops its thread, which removes
/// its sockets and directory.
pub struct SwitchResource {
    switch: Mutex<Option<Switch>>,
    /// The switch's group (when evum is root), held while the resource
    /// lives: the VMs that join the switch get it.
    group: Option<HeldId>,
    /// The watchdog removes the switch's directory if the BEAM dies before
    /// the switch's thread has: released only once that thread is done.
    watchdog_id: u64,
}

impl Drop for SwitchResource {
    fn drop(&mut self) {
        let id = self.watchdog_id;
        let Some(switch) = self.switch.get_mut().unwrap_or_else(|p| p.into_inner()).take() else {
            evum_core::vm::watchdog::release(id);
            return;
        };
        // Waiting for the loop to remove the sockets is not for the
        // scheduler that collects the resource. Should no thread start,
        // the switch is dropped (which stops it) and the watchdog keeps
        // the directory until the BEAM exits.
        let _ = std::thread::Builder::new()
            .name("evum-switch-stop".into())
            .spawn(move || {
                switch.stop();
                evum_core::vm::watchdog::release(id);
            });
    }
}

#[rustler::resource_impl]
impl rustler::Resource for SwitchResource {}

fn switch_error<'a>(env: Env<'a>, e: impl ToString) -> Term<'a> {
    (atoms::error(), (atoms::switch(), e.to_string())).encode(env)
}

/// Like [`with_switch`], for answers that may fail to be built.
pub(crate) fn try_with_switch<'a>(
    env: Env<'a>,
    res: &SwitchResource,
    f: impl FnOnce(&Switch) -> NifResult<Term<'a>>,
) -> NifResult<Term<'a>> {
    match res.switch.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(switch) => f(switch),
        None => Ok((atoms::error(), atoms::not_running()).encode(env)),
    }
}

/// Runs `f` on the switch, or answers `{error, not_running}` once stopped.
fn with_switch<'a>(env: Env<'a>, res: &SwitchResource, f: impl FnOnce(&Switch) -> Term<'a>) -> Term<'a> {
    match res.switch.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(switch) => f(switch),
        None => (atoms::error(), atoms::not_running()).encode(env),
    }
}

/// Starts a switch whose sockets live in a new directory under evum's
/// runtime base, open to a group of the switch's own when evum is root (its
/// VMs join it: see `evum_core::vm::jail`), else to evum's user only. `cpu`
/// is the `cpu` option's text
/// (`any`, `auto`, `0,2`) for the switch's thread; `busy_poll` the longest
/// it polls for events before it sleeps, in microseconds (`default`: the
/// switch's own default); `limits` a map of those of `max_hold_ms`,
/// `max_macs`, `mac_table_size`, `storm_limit`, `port_rate` (a number or
/// `infinity`) and `port_security` (a boolean) that are not to be the
/// switch's defaults (evum_switch has checked them).
#[rustler::nif(schedule = "DirtyIo")]
fn switch_start<'a>(env: Env<'a>, hub: bool, cpu: &str, busy_poll: Term<'a>, limits: Term<'a>) -> NifResult<Term<'a>> {
    let cpus = match CpuChoice::parse(cpu).and_then(|choice| choice_set(&choice)) {
        Ok(cpus) => cpus,
        Err(e) => return Ok((atoms::error(), (atoms::bad_option(), e.to_string())).encode(env)),
    };
    let group = match jail::jailed().then(jail::take_id).transpose() {
        Ok(group) => group,
        Err(e) => return Ok(switch_error(env, e)),
    };
    let gid = group.as_ref().map(|held| held.id);
    let dir = match evum_core::vm::switch_dir(gid) {
        Ok(dir) => dir,
        Err(e) => return Ok(switch_error(env, e)),
    };
    let mut config = SwitchConfig::new(&dir);
    apply_limits(&mut config, limits)?;
    config.hub = hub;
    config.cpus = cpus;
    config.group = gid;
    if let Ok(us) = busy_poll.decode::<u64>() {
        config.busy_poll = Duration::from_micros(us);
    }
    match Switch::start(config) {
        Ok(switch) => {
            let resource = SwitchResource {
                switch: Mutex::new(Some(switch)),
                group,
                watchdog_id: evum_core::vm::watchdog::keep(&dir),
            };
            Ok((atoms::ok(), ResourceArc::new(resource)).encode(env))
        }
        Err(e) => {
            evum_core::vm::remove_switch_dir(&dir);
            Ok(switch_error(env, e))
        }
    }
}

/// Sets the limits `limits` names (see [`switch_start`]); a value of the
/// wrong type is badarg.
fn apply_limits(config: &mut SwitchConfig, limits: Term) -> NifResult<()> {
    let get = |key: rustler::Atom| limits.map_get(key.encode(limits.get_env())).ok();
    let rate = |term: Term| -> NifResult<Option<u32>> {
        if term.decode::<rustler::Atom>().is_ok_and(|a| a == atoms::infinity()) {
            Ok(None)
        } else {
            term.decode::<u32>().map(Some)
        }
    };
    if let Some(ms) = get(atoms::max_hold_ms()) {
        config.max_hold = Duration::from_millis(ms.decode()?);
    }
    if let Some(n) = get(atoms::max_macs()) {
        config.max_macs = n.decode()?;
    }
    if let Some(n) = get(atoms::mac_table_size()) {
        config.mac_table_size = n.decode()?;
    }
    if let Some(r) = get(atoms::storm_limit()) {
        config.storm_limit = rate(r)?;
    }
    if let Some(r) = get(atoms::port_rate()) {
        config.port_rate = rate(r)?;
    }
    if let Some(on) = get(atoms::port_security()) {
        config.port_security = on.decode()?;
    }
    if let Some(seed) = get(atoms::seed()) {
        config.seed = Some(seed.decode()?);
    }
    Ok(())
}

/// The switch's group (`undefined` when evum is not root): a VM on the
/// switch joins it.
#[rustler::nif]
fn switch_group(env: Env, resource: ResourceArc<SwitchResource>) -> Term {
    match &resource.group {
        Some(held) => held.id.encode(env),
        None => atoms::undefined().encode(env),
    }
}

/// Stops the switch now (its ports close; VMs on it lose their link) and
/// returns once its sockets and directory are gone, so that nothing is left
/// behind should the BEAM exit next.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_stop(resource: ResourceArc<SwitchResource>) -> rustler::Atom {
    let switch = resource.switch.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(switch) = switch {
        switch.stop();
    }
    atoms::ok()
}

#[rustler::nif]
fn switch_sockets(env: Env, resource: ResourceArc<SwitchResource>) -> Term {
    with_switch(env, &resource, |s| {
        let ctl = s.control_socket().to_string_lossy().into_owned();
        let bess = s.bess_socket().to_string_lossy().into_owned();
        (atoms::ok(), ctl, bess).encode(env)
    })
}

/// Frames to a process as `{Tag, Server, Port, Frame}`: `evum_frame` for
/// an attached port, `evum_capture` for a capture (Port: its target, 0 for
/// every frame).
struct PidSink {
    env: OwnedEnv,
    owner: LocalPid,
    server: LocalPid,
    tag: rustler::Atom,
}

impl FrameSink for PidSink {
    fn frame(&mut self, port: PortId, frame: &[u8]) -> bool {
        let (server, tag) = (self.server, self.tag);
        self.env
            .send_and_clear(&self.owner, |env| {
                let bin: Binary = NewBinary::from_slice(env, frame).into();
                (tag, server, port.0, bin).encode(env)
            })
            .is_ok()
    }
}

fn mac_from(term: Term) -> NifResult<Option<Mac>> {
    if term.is_atom() {
        return Ok(None);
    }
    let bin = term.decode_as_binary()?;
    let mac: Mac = bin.as_slice().try_into().map_err(|_| rustler::Error::BadArg)?;
    Ok(Some(mac))
}

/// Makes `owner` a port of the switch: `{ok, Port}`. Frames for it go to
/// `owner`, tagged with `server` (the evum_switch pid).
#[rustler::nif]
fn switch_attach<'a>(
    env: Env<'a>,
    resource: ResourceArc<SwitchResource>,
    owner: LocalPid,
    server: LocalPid,
    mac: Term<'a>,
    promiscuous: bool,
) -> NifResult<Term<'a>> {
    let mac = mac_from(mac)?;
    Ok(with_switch(env, &resource, |s| {
        let sink = PidSink {
            env: OwnedEnv::new(),
            owner,
            server,
            tag: atoms::evum_frame(),
        };
        match s.attach(mac, promiscuous, Box::new(sink)) {
            Ok(port) => (atoms::ok(), port.0).encode(env),
            Err(e) => switch_error(env, e),
        }
    }))
}

#[rustler::nif]
fn switch_detach(env: Env, resource: ResourceArc<SwitchResource>, port: u64) -> Term {
    with_switch(env, &resource, |s| match s.detach(PortId(port)) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => switch_error(env, e),
    })
}

/// A frame entering the switch from an attached port. Only queues it.
#[rustler::nif]
fn switch_inject<'a>(env: Env<'a>, resource: ResourceArc<SwitchResource>, port: u64, frame: Binary<'a>) -> Term<'a> {
    with_switch(env, &resource, |s| {
        match s.inject(PortId(port), frame.as_slice().to_vec()) {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => switch_error(env, e),
        }
    })
}

/// Makes or ends a fault: `{partition, [[Port]]}`, `heal`, `{cut, From,
/// To}`, `{restore, From, To}` (ports by id); in force when this returns.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_fault<'a>(env: Env<'a>, resource: ResourceArc<SwitchResource>, fault: Term<'a>) -> NifResult<Term<'a>> {
    let ports = |ids: Vec<u64>| ids.into_iter().map(PortId).collect::<Vec<_>>();
    let fault = if let Ok(atom) = fault.decode::<rustler::Atom>() {
        if atom != atoms::heal() {
            return Err(rustler::Error::BadArg);
        }
        Fault::Heal
    } else if let Ok((tag, groups)) = fault.decode::<(rustler::Atom, Vec<Vec<u64>>)>() {
        if tag != atoms::partition() {
            return Err(rustler::Error::BadArg);
        }
        Fault::Partition(groups.into_iter().map(ports).collect())
    } else {
        let (tag, from, to) = fault.decode::<(rustler::Atom, u64, u64)>()?;
        match tag {
            t if t == atoms::cut() => Fault::Cut(PortId(from), PortId(to)),
            t if t == atoms::restore() => Fault::Restore(PortId(from), PortId(to)),
            _ => return Err(rustler::Error::BadArg),
        }
    };
    try_with_switch(env, &resource, |switch| match switch.fault(fault) {
        Ok(()) => Ok(atoms::ok().encode(env)),
        Err(e) => Ok(switch_error(env, e)),
    })
}

/// The faults in force: `{ok, #{groups => [[Port]], cuts => [{From, To}]}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_faults(env: Env, resource: ResourceArc<SwitchResource>) -> NifResult<Term> {
    try_with_switch(env, &resource, |switch| match switch.faults() {
        Ok((groups, cuts)) => {
            let groups: Vec<Vec<u64>> = groups
                .into_iter()
                .map(|g| g.into_iter().map(|p| p.0).collect())
                .collect();
            let cuts: Vec<(u64, u64)> = cuts.into_iter().map(|(from, to)| (from.0, to.0)).collect();
            let map = atom_map(
                env,
                &[(atoms::groups(), groups.encode(env)), (atoms::cuts(), cuts.encode(env))],
            )?;
            Ok((atoms::ok(), map).encode(env))
        }
        Err(e) => Ok(switch_error(env, e)),
    })
}

/// What a capture takes: `all` (None), or a port id.
fn capture_target(term: Term) -> NifResult<Option<PortId>> {
    match term.decode::<rustler::Atom>() {
        Ok(a) if a == atoms::all() => Ok(None),
        _ => Ok(Some(PortId(term.decode()?))),
    }
}

/// Starts a capture of `target` (a port id, or `all`) into a new pcap file
/// at `path`, of at most `max_bytes`: `{ok, Id}` or `{error, {capture,
/// Why}}` (the file exists, or cannot be made).
#[rustler::nif(schedule = "DirtyIo")]
fn switch_capture<'a>(
    env: Env<'a>,
    resource: ResourceArc<SwitchResource>,
    target: Term<'a>,
    path: Term<'a>,
    max_bytes: u64,
) -> NifResult<Term<'a>> {
    let target = capture_target(target)?;
    let path = crate::path(path)?;
    try_with_switch(env, &resource, |switch| {
        match switch.capture(target, &path, max_bytes) {
            Ok(Ok(id)) => Ok((atoms::ok(), id).encode(env)),
            Ok(Err(e)) => Ok((atoms::error(), (atoms::capture(), e.to_string())).encode(env)),
            Err(e) => Ok(switch_error(env, e)),
        }
    })
}

/// A capture whose frames go to `pid` as `{evum_capture, Server, Target,
/// Frame}`, at most `max_frames` of them: `{ok, Id}`.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_capture_to<'a>(
    env: Env<'a>,
    resource: ResourceArc<SwitchResource>,
    target: Term<'a>,
    pid: LocalPid,
    server: LocalPid,
    max_frames: u64,
) -> NifResult<Term<'a>> {
    let target = capture_target(target)?;
    let sink = PidSink {
        env: OwnedEnv::new(),
        owner: pid,
        server,
        tag: atoms::evum_capture(),
    };
    try_with_switch(env, &resource, |switch| {
        match switch.capture_to(target, Box::new(sink), max_frames) {
            Ok(id) => Ok((atoms::ok(), id).encode(env)),
            Err(e) => Ok(switch_error(env, e)),
        }
    })
}

/// Ends a capture: `{ok, #{frames, bytes, missed}}`, or `{error,
/// unknown_capture}`.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_stop_capture(env: Env, resource: ResourceArc<SwitchResource>, id: u64) -> NifResult<Term> {
    try_with_switch(env, &resource, |switch| match switch.stop_capture(id) {
        Ok(Some(stats)) => {
            let map = atom_map(
                env,
                &[
                    (atoms::frames(), stats.frames.encode(env)),
                    (atoms::bytes(), stats.bytes.encode(env)),
                    (atoms::missed(), stats.missed.encode(env)),
                ],
            )?;
            Ok((atoms::ok(), map).encode(env))
        }
        Ok(None) => Ok((atoms::error(), atoms::unknown_capture()).encode(env)),
        Err(e) => Ok(switch_error(env, e)),
    })
}

/// Sends a switch's events to a process as `{evum_switch_event, Event}`.
struct EventsTo {
    pid: LocalPid,
    env: OwnedEnv,
}

impl EventSink for EventsTo {
    fn event(&mut self, event: SwitchEvent) {
        let _ = self.env.send_and_clear(&self.pid, |env| {
            let event = match event {
                SwitchEvent::PortUp { port, kind, mac } => {
                    (atoms::port_up(), port.0, kind_atom(kind), mac_term(env, mac)).encode(env)
                }
                SwitchEvent::PortDown { port } => (atoms::port_down(), port.0).encode(env),
                SwitchEvent::MacMoved { mac, from, to } => {
                    (atoms::mac_moved(), mac_term(env, Some(mac)), from.0, to.0).encode(env)
                }
            };
            (atoms::evum_switch_event(), event).encode(env)
        });
    }
}

fn kind_atom(kind: PortKind) -> rustler::Atom {
    match kind {
        PortKind::Daemon => atoms::daemon(),
        PortKind::Bess => atoms::bess(),
        PortKind::Attached => atoms::attached(),
    }
}

/// The switch's events go to `pid` (evum_switch's process) from now on.
#[rustler::nif]
fn switch_events(env: Env, resource: ResourceArc<SwitchResource>, pid: LocalPid) -> Term {
    with_switch(env, &resource, |s| {
        match s.events(Box::new(EventsTo {
            pid,
            env: OwnedEnv::new(),
        })) {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => switch_error(env, e),
        }
    })
}

/// `{to, Port}` or `{pair, From, To}`.
fn decode_link(term: Term) -> NifResult<Link> {
    if let Ok((tag, port)) = term.decode::<(rustler::Atom, u64)>() {
        if tag == atoms::to() {
            return Ok(Link::To(PortId(port)));
        }
    }
    let (tag, from, to) = term.decode::<(rustler::Atom, u64, u64)>()?;
    if tag != atoms::pair() {
        return Err(rustler::Error::BadArg);
    }
    Ok(Link::Pair(PortId(from), PortId(to)))
}

fn encode_link<'a>(env: Env<'a>, link: Link) -> Term<'a> {
    match link {
        Link::To(p) => (atoms::to(), p.0).encode(env),
        Link::Pair(a, b) => (atoms::pair(), a.0, b.0).encode(env),
    }
}

/// Impairs a link with the settings evum_switch checked (every key given,
/// times in microseconds, `rate` 0 for none), or `clean` makes it clean.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_impair<'a>(
    env: Env<'a>,
    resource: ResourceArc<SwitchResource>,
    link: Term<'a>,
    settings: Term<'a>,
) -> NifResult<Term<'a>> {
    let link = decode_link(link)?;
    let impairment = if settings.decode::<rustler::Atom>().is_ok_and(|a| a == atoms::clean()) {
        None
    } else {
        let get = |key: rustler::Atom| settings.map_get(key.encode(env));
        let burst: (f64, f64) = get(atoms::loss_burst())?.decode()?;
        let rate: u64 = get(atoms::rate())?.decode()?;
        Some(Impairment {
            loss: get(atoms::loss())?.decode()?,
            loss_burst: (burst.0 > 0.0).then_some(burst),
            delay: Duration::from_micros(get(atoms::delay_us())?.decode()?),
            jitter: Duration::from_micros(get(atoms::jitter_us())?.decode()?),
            duplicate: get(atoms::duplicate())?.decode()?,
            reorder: get(atoms::reorder())?.decode()?,
            corrupt: get(atoms::corrupt())?.decode()?,
            rate: (rate > 0).then_some(rate),
        })
    };
    try_with_switch(env, &resource, |switch| match switch.impair(link, impairment) {
        Ok(()) => Ok(atoms::ok().encode(env)),
        Err(e) => Ok(switch_error(env, e)),
    })
}

/// Every impaired link: `[#{link, counters...}]`.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_impairments(env: Env, resource: ResourceArc<SwitchResource>) -> NifResult<Term> {
    try_with_switch(env, &resource, |switch| match switch.impairments() {
        Ok(links) => {
            let mut out = Vec::with_capacity(links.len());
            for (link, _, c) in links {
                out.push(atom_map(
                    env,
                    &[
                        (atoms::link(), encode_link(env, link)),
                        (atoms::frames(), c.frames.encode(env)),
                        (atoms::lost(), c.lost.encode(env)),
                        (atoms::duplicated(), c.duplicated.encode(env)),
                        (atoms::corrupted(), c.corrupted.encode(env)),
                        (atoms::reordered(), c.reordered.encode(env)),
                        (atoms::overflow(), c.overflow.encode(env)),
                        (atoms::held(), c.held.encode(env)),
                    ],
                )?);
            }
            Ok((atoms::ok(), out).encode(env))
        }
        Err(e) => Ok(switch_error(env, e)),
    })
}

/// Binds an address (4 bytes) to a MAC (6 bytes): see `Switch::bind`.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_bind<'a>(
    env: Env<'a>,
    resource: ResourceArc<SwitchResource>,
    address: Binary<'a>,
    mac: Binary<'a>,
) -> NifResult<Term<'a>> {
    let address: [u8; 4] = address.as_slice().try_into().map_err(|_| rustler::Error::BadArg)?;
    let mac: Mac = mac.as_slice().try_into().map_err(|_| rustler::Error::BadArg)?;
    Ok(with_switch(env, &resource, |s| match s.bind(address.into(), mac) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => switch_error(env, e),
    }))
}

fn mac_term<'a>(env: Env<'a>, mac: Option<Mac>) -> Term<'a> {
    match mac {
        Some(mac) => {
            let bin: Binary = NewBinary::from_slice(env, &mac).into();
            bin.encode(env)
        }
        None => atoms::undefined().encode(env),
    }
}

/// The ports with their counters, as maps.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_ports(env: Env, resource: ResourceArc<SwitchResource>) -> NifResult<Term> {
    try_with_switch(env, &resource, |switch| {
        let ports = match switch.ports() {
            Ok(ports) => ports,
            Err(e) => return Ok(switch_error(env, e)),
        };
        let mut out = Vec::with_capacity(ports.len());
        for p in ports {
            let kind = kind_atom(p.kind);
            out.push(atom_map(
                env,
                &[
                    (atoms::id(), p.id.0.encode(env)),
                    (atoms::kind(), kind.encode(env)),
                    (atoms::mac(), mac_term(env, p.mac)),
                    (atoms::frames_in(), p.counters.frames_in.encode(env)),
                    (atoms::frames_out(), p.counters.frames_out.encode(env)),
                    (atoms::bytes_in(), p.counters.bytes_in.encode(env)),
                    (atoms::bytes_out(), p.counters.bytes_out.encode(env)),
                    (atoms::drops_queue_full(), p.counters.drops_queue_full.encode(env)),
                    (atoms::drops_send_error(), p.counters.drops_send_error.encode(env)),
                    (atoms::drops_rate(), p.counters.drops_rate.encode(env)),
                    (atoms::drops_storm(), p.counters.drops_storm.encode(env)),
                    (atoms::drops_spoofed(), p.counters.drops_spoofed.encode(env)),
                    (atoms::drops_mac_limit(), p.counters.drops_mac_limit.encode(env)),
                    (atoms::drops_guard(), p.counters.drops_guard.encode(env)),
                    (atoms::drops_nemesis(), p.counters.drops_nemesis.encode(env)),
                    (atoms::queued(), p.queued.encode(env)),
                ],
            )?);
        }
        Ok((atoms::ok(), out).encode(env))
    })
}

/// The learned MACs: `[#{mac, port, age_ms}]`.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_mac_table(env: Env, resource: ResourceArc<SwitchResource>) -> NifResult<Term> {
    try_with_switch(env, &resource, |switch| match switch.mac_table() {
        Ok(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (mac, port, age) in entries {
                out.push(atom_map(
                    env,
                    &[
                        (atoms::mac(), mac_term(env, Some(mac))),
                        (atoms::port(), port.0.encode(env)),
                        (atoms::age_ms(), (age.as_millis() as u64).encode(env)),
                    ],
                )?);
            }
            Ok((atoms::ok(), out).encode(env))
        }
        Err(e) => Ok(switch_error(env, e)),
    })
}

/// What the switch rejected, by reason.
#[rustler::nif(schedule = "DirtyIo")]
fn switch_counters(env: Env, resource: ResourceArc<SwitchResource>) -> NifResult<Term> {
    try_with_switch(env, &resource, |switch| match switch.counters() {
        Ok(c) => Ok((
            atoms::ok(),
            atom_map(
                env,
                &[
                    (atoms::bad_magic(), c.bad_magic.encode(env)),
                    (atoms::bad_version(), c.bad_version.encode(env)),
                    (atoms::bad_type(), c.bad_type.encode(env)),
                    (atoms::bad_address(), c.bad_address.encode(env)),
                    (atoms::duplicate_address(), c.duplicate_address.encode(env)),
                    (atoms::short_request(), c.short_request.encode(env)),
                    (atoms::oversized_request(), c.oversized_request.encode(env)),
                    (atoms::request_timeout(), c.request_timeout.encode(env)),
                    (atoms::too_many_pending(), c.too_many_pending.encode(env)),
                    (atoms::too_many_ports(), c.too_many_ports.encode(env)),
                    (atoms::control_garbage(), c.control_garbage.encode(env)),
                    (atoms::runt(), c.runt.encode(env)),
                    (atoms::oversized_frame(), c.oversized_frame.encode(env)),
                    (atoms::foreign_peer(), c.foreign_peer.encode(env)),
                    (atoms::foreign_address(), c.foreign_address.encode(env)),
                    (atoms::mac_table_full(), c.mac_table_full.encode(env)),
                    (atoms::events_dropped(), c.events_dropped.encode(env)),
                ],
            )?,
        )
            .encode(env)),
        Err(e) => Ok(switch_error(env, e)),
    })
}
