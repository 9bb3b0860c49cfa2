//! The Erlang face of evum_core: term conversion, resources, and message
//! delivery to BEAM processes. Blocking work (fork and exec, mconsole round
//! trips, image building) runs on dirty I/O schedulers; everything else only
//! queues work for evum_core's own threads and returns at once.

mod config;
mod events;
mod fetch;
mod gateway;
mod kernel;
mod reply;
mod switch;

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use evum_core::limits::Exhausted;
use evum_core::vm::io_loop::ConsoleFlow;
use evum_core::vm::placement::CpuChoice;
use evum_core::{image, mconsole, vm, vm::control, BootOption, Vm, VmConfig};
use nix_signal::parse_signal;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NifResult, ResourceArc, Term};

mod atoms {
    rustler::atoms! {
        ok, error, undefined, true_ = "true",
        not_running, bad_option, spawn, runtime_dir, bad_umid, image, mconsole,
        timeout, not_found, none, os_pid, umid, runtime_dir_key = "runtime_dir", mconsole_socket, running,
        unsupported_by_kernel, jail, console_dropped, deliver, hold, drop,
        system_limit, open_files, no_space, busy, initramfs, disk, disk_index,
    }
}

mod nix_signal {
    use evum_core::vm::io_loop::Signal;

    /// `sigterm`, `sigkill`, ... as the atom names them.
    pub fn parse_signal(name: &str) -> Option<Signal> {
        name.to_ascii_uppercase().parse().ok()
    }
}

/// A VM as the BEAM holds it. When the last reference goes (the VM's
/// gen_server exited, however brutally), the VM is killed.
pub struct VmResource {
    vm: Mutex<Vm>,
    /// Where its console lines go (the I/O thread reads it per line).
    routing: events::SharedRouting,
}

#[rustler::resource_impl]
impl rustler::Resource for VmResource {}

fn error_tuple<'a>(env: Env<'a>, kind: Atom, message: impl ToString) -> Term<'a> {
    (atoms::error(), (kind, message.to_string())).encode(env)
}

/// `{error, {system_limit, open_files}}` or `{error, {no_space, Path}}`:
/// a host resource that ran out, named so a caller can match on it.
pub(crate) fn exhausted_error<'a>(env: Env<'a>, exhausted: &Exhausted) -> Term<'a> {
    match exhausted {
        Exhausted::OpenFiles => (atoms::error(), (atoms::system_limit(), atoms::open_files())).encode(env),
        Exhausted::NoSpace(path) => (atoms::error(), (atoms::no_space(), reply::path_binary(env, path))).encode(env),
    }
}

/// A map with atom keys.
fn atom_map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> NifResult<Term<'a>> {
    let pairs: Vec<(Term, Term)> = pairs.iter().map(|(k, v)| (k.encode(env), *v)).collect();
    Term::map_from_pairs(env, &pairs)
}

fn text(term: Term) -> NifResult<String> {
    let bin = term.decode_as_binary()?;
    String::from_utf8(bin.as_slice().to_vec()).map_err(|_| rustler::Error::BadArg)
}

/// A path as the binary's bytes, UTF-8 or not; empty or with a NUL is badarg.
pub(crate) fn path(term: Term) -> NifResult<PathBuf> {
    let bytes = term.decode_as_binary()?.as_slice().to_vec();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(rustler::Error::BadArg);
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// `{Name, Index, Value}` with Index -1 for "none", as evum_opts:normalize/1 makes them.
fn boot_option(term: Term) -> Result<BootOption, String> {
    let (name, index, value): (Term, i64, Term) = term.decode().map_err(|_| format!("malformed option {term:?}"))?;
    let name = text(name).map_err(|_| "option name is not text".to_string())?;
    let value = text(value).map_err(|_| format!("option {name}: value is not text"))?;
    let index = u32::try_from(index).ok();
    let need_index = |i: Option<u32>| i.ok_or_else(|| format!("option {name} needs an index"));
    let flag = |v: &str| v == "true";
    Ok(match name.as_str() {
        "con" => BootOption::Con(index, value),
        "ssl" => BootOption::Ssl(index, value),
        "ubd" | "disk" => BootOption::Ubd(need_index(index)?, value),
        "disk_read_only" => BootOption::ReadOnlyUbd(need_index(index)?, value),
        "eth" => BootOption::Eth(need_index(index)?, value),
        "init" => BootOption::Init(value),
        "initrd" => BootOption::Initrd(value.into()),
        "mem" => BootOption::Mem(value),
        "root" => BootOption::Root(value),
        "rootflags" => BootOption::RootFlags(value),
        "rootfstype" => BootOption::RootFsType(value),
        "verbose" => BootOption::Verbose(flag(&value)),
        "write" => BootOption::Write(flag(&value)),
        "hostfs" => BootOption::Hostfs(value.into()),
        "append" => BootOption::Append(value),
        "cpu" => BootOption::Cpu(CpuChoice::parse(&value).map_err(|e| e.to_string())?),
        "seccomp" => BootOption::Seccomp(flag(&value)),
        "nice" => BootOption::Nice(
            value
                .parse()
                .ok()
                .filter(|n| *n <= evum_core::vm::priority::MAX_NICE)
                .ok_or_else(|| format!("option nice: {value} is not a nice value (0 to 19)"))?,
        ),
        "cpus" => BootOption::Cpus(
            value
                .parse()
                .map_err(|_| format!("option cpus: {value} is not a number"))?,
        ),
        other => match other.strip_prefix("env:") {
            Some(key) => BootOption::Env(key.to_string(), value),
            None => return Err(format!("unknown option {other}")),
        },
    })
}

/// Sets the ids VMs and switches take their users and groups from (the
/// `vm_ids` setting: `Count` ids from `First`).
#[rustler::nif]
fn jail_ids(env: Env, first: u32, count: u32) -> Term {
    match vm::jail::set_range(vm::jail::IdRange { first, count }) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_tuple(env, atoms::bad_option(), e),
    }
}

#[allow(clippy::too_many_arguments)]
#[rustler::nif(schedule = "DirtyIo")]
fn vm_start<'a>(
    env: Env<'a>,
    owner: LocalPid,
    server: LocalPid,
    tagged: bool,
    kernel: Term<'a>,
    options: Vec<Term<'a>>,
    umid: Term<'a>,
    uml_dir: Term<'a>,
    groups: Vec<u32>,
) -> NifResult<Term<'a>> {
    let options: Result<Vec<BootOption>, String> = options.into_iter().map(boot_option).collect();
    let options = match options {
        Ok(options) => options,
        Err(why) => return Ok(error_tuple(env, atoms::bad_option(), why)),
    };
    let optional = |t: Term| -> NifResult<Option<String>> { text(t).map(|s| (!s.is_empty()).then_some(s)) };
    let config = VmConfig {
        kernel: PathBuf::from(text(kernel)?),
        options,
        umid: optional(umid)?,
        uml_dir: optional(uml_dir)?.map(PathBuf::from),
        groups,
    };
    let routing = events::Routing::new(owner, server, tagged);
    let events = events::Mailboxes::new(routing.clone(), server, tagged);
    match evum_core::start(config, Box::new(events)) {
        Ok(vm) => Ok((
            atoms::ok(),
            ResourceArc::new(VmResource {
                vm: Mutex::new(vm),
                routing,
            }),
        )
            .encode(env)),
        // `{error, {unsupported_by_kernel, Kernel, seccomp | cpus}}`: a
        // term to match on, naming the option the kernel lacks.
        Err(vm::StartError::UnsupportedByKernel { kernel, option }) => Ok((
            atoms::error(),
            (
                atoms::unsupported_by_kernel(),
                kernel.to_string_lossy().into_owned(),
                Atom::from_str(env, option)?,
            ),
        )
            .encode(env)),
        Err(e) => {
            if let Some(exhausted) = e.exhausted() {
                return Ok(exhausted_error(env, &exhausted));
            }
            let kind = match &e {
                vm::StartError::Option(_) => atoms::bad_option(),
                vm::StartError::Spawn(_) | vm::StartError::KernelUnreadable { .. } => atoms::spawn(),
                vm::StartError::RuntimeDir { .. } => atoms::runtime_dir(),
                vm::StartError::Jail(_) => atoms::jail(),
                vm::StartError::BadUmid(_) => atoms::bad_umid(),
                vm::StartError::UnsupportedByKernel { .. } => atoms::unsupported_by_kernel(),
            };
            Ok(error_tuple(env, kind, e))
        }
    }
}

fn with_vm<T>(resource: &ResourceArc<VmResource>, f: impl FnOnce(&Vm) -> T) -> T {
    let vm = resource.vm.lock().unwrap_or_else(|p| p.into_inner());
    f(&vm)
}

fn queued(env: Env, result: Result<(), evum_core::NotRunning>) -> Term {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(_) => (atoms::error(), atoms::not_running()).encode(env),
    }
}

fn with_routing<T>(resource: &ResourceArc<VmResource>, f: impl FnOnce(&mut events::Routing) -> T) -> T {
    let mut routing = resource.routing.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut routing)
}

/// Console lines go to `owner` from now on.
#[rustler::nif]
fn vm_set_owner(resource: ResourceArc<VmResource>, owner: LocalPid) -> Atom {
    with_routing(&resource, |routing| routing.set_owner(owner));
    atoms::ok()
}

/// The next console line that ends with `line` (its echo) goes to the VM's
/// server as `{evum_echo, Tag, Line}`, not to the owner; `{error, busy}`
/// when events::MAX_ECHOES are awaited already.
#[rustler::nif]
fn vm_expect_echo<'a>(env: Env<'a>, resource: ResourceArc<VmResource>, line: Binary<'a>, tag: u64) -> Term<'a> {
    if with_routing(&resource, |routing| routing.expect_echo(line.as_slice().to_vec(), tag)) {
        atoms::ok().encode(env)
    } else {
        (atoms::error(), atoms::busy()).encode(env)
    }
}

/// The echo `tag` is no longer awaited: what was held back as its start
/// goes to the owner after all.
#[rustler::nif]
fn vm_forget_echo(env: Env, resource: ResourceArc<VmResource>, tag: u64) -> Atom {
    with_routing(&resource, |routing| {
        for line in routing.forget_echo(tag) {
            // An owner that is gone loses nothing it could have read.
            let _ = env.send(&routing.owner(), routing.line_term(env, &line));
        }
    });
    atoms::ok()
}

/// Queues console input. Returns at once: the I/O thread writes it.
#[rustler::nif]
fn vm_write<'a>(env: Env<'a>, resource: ResourceArc<VmResource>, data: Binary<'a>) -> Term<'a> {
    queued(
        env,
        with_vm(&resource, |vm| vm.handle.write_console(data.as_slice().to_vec())),
    )
}

/// Asks the guest's command loop to run `command` as request `id`; the
/// result comes to the VM's server as `{evum_ctl, {result, Id, Status,
/// Output}}`, or `{evum_ctl, {output_too_large, Id, Length}}` when it has
/// more than `max_output` bytes (at most 16 MiB, control::MAX_OUTPUT).
#[rustler::nif]
fn vm_run<'a>(
    env: Env<'a>,
    resource: ResourceArc<VmResource>,
    id: u64,
    command: Binary<'a>,
    max_output: u64,
) -> Term<'a> {
    // Any bytes: the guest's shell takes them as they are.
    let max_output = max_output.min(control::MAX_OUTPUT);
    queued(
        env,
        with_vm(&resource, |vm| {
            vm.handle.run_command(id, command.as_slice(), max_output)
        }),
    )
}

/// Asks the guest to sync its file systems (a stop's first step); the
/// answer comes as request `id`'s result.
#[rustler::nif]
fn vm_sync(env: Env, resource: ResourceArc<VmResource>, id: u64) -> Term {
    queued(env, with_vm(&resource, |vm| vm.handle.sync_disks(id)))
}

/// `deliver`, `hold` or `drop` the guest's console output from now on.
#[rustler::nif]
fn vm_console_flow(env: Env, resource: ResourceArc<VmResource>, flow: Atom) -> NifResult<Term> {
    let flow = if flow == atoms::deliver() {
        ConsoleFlow::Deliver
    } else if flow == atoms::hold() {
        ConsoleFlow::Hold
    } else if flow == atoms::drop() {
        ConsoleFlow::Drop
    } else {
        return Err(rustler::Error::BadArg);
    };
    Ok(queued(env, with_vm(&resource, |vm| vm.handle.set_console_flow(flow))))
}

/// Signals the UML process (`whole_group` false) or its whole process group.
#[rustler::nif]
fn vm_signal<'a>(
    env: Env<'a>,
    resource: ResourceArc<VmResource>,
    signal: Term<'a>,
    whole_group: bool,
) -> NifResult<Term<'a>> {
    let name = signal.atom_to_string()?;
    let signal = parse_signal(&name).ok_or(rustler::Error::BadArg)?;
    Ok(queued(
        env,
        with_vm(&resource, |vm| vm.handle.signal(signal, whole_group)),
    ))
}

#[rustler::nif]
fn vm_info<'a>(env: Env<'a>, resource: ResourceArc<VmResource>) -> NifResult<Term<'a>> {
    with_vm(&resource, |vm| {
        let pairs = [
            (atoms::os_pid().encode(env), vm.handle.os_pid().encode(env)),
            (atoms::umid().encode(env), vm.umid.encode(env)),
            (
                atoms::runtime_dir_key().encode(env),
                vm.runtime_dir.to_string_lossy().into_owned().encode(env),
            ),
            (
                atoms::mconsole_socket().encode(env),
                vm.mconsole_socket().to_string_lossy().into_owned().encode(env),
            ),
            (atoms::running().encode(env), vm.handle.is_running().encode(env)),
            (
                atoms::console_dropped().encode(env),
                vm.handle.console_dropped().encode(env),
            ),
        ];
        Term::map_from_pairs(env, &pairs)
    })
}

/// One mconsole round trip: `{ok, Text}`, `{error, Text}` when the guest
/// refused, or `{error, {Kind, Message}}` when it could not be asked.
#[rustler::nif(schedule = "DirtyIo")]
fn mconsole_request<'a>(env: Env<'a>, socket: Term<'a>, command: Term<'a>, timeout_ms: u64) -> NifResult<Term<'a>> {
    let socket = PathBuf::from(text(socket)?);
    let command = text(command)?;
    Ok(
        match mconsole::request(&socket, &command, Duration::from_millis(timeout_ms)) {
            Ok(reply) if reply.ok => (atoms::ok(), reply.text).encode(env),
            Ok(reply) => (atoms::error(), reply.text).encode(env),
            Err(mconsole::MconsoleError::Timeout(_)) => (atoms::error(), atoms::timeout()).encode(env),
            Err(e) => error_tuple(env, atoms::mconsole(), e),
        },
    )
}

/// Builds (once) and returns evum's busybox image:
/// `{ok, #{initramfs => Path, disk => Path, disk_index => 15}}`, the last
/// the UBD index the guest's init mounts the disk from.
#[rustler::nif(schedule = "DirtyIo")]
fn busybox_image<'a>(env: Env<'a>, busybox: Term<'a>, cache_dir: Term<'a>) -> NifResult<Term<'a>> {
    let busybox = PathBuf::from(text(busybox)?);
    let cache_dir = PathBuf::from(text(cache_dir)?);
    Ok(match image::busybox_image(&busybox, &cache_dir) {
        Ok(image) => {
            let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
            let files = Term::map_from_pairs(
                env,
                &[
                    (atoms::initramfs().encode(env), path(&image.initramfs).encode(env)),
                    (atoms::disk().encode(env), path(&image.disk).encode(env)),
                    (atoms::disk_index().encode(env), image::busybox::DISK_INDEX.encode(env)),
                ],
            )?;
            (atoms::ok(), files).encode(env)
        }
        Err(e) => match e.exhausted() {
            Some(exhausted) => exhausted_error(env, &exhausted),
            None => error_tuple(env, atoms::image(), e),
        },
    })
}

/// `ok` if this process can open the files a VM's start needs now, else
/// `{error, {system_limit, open_files}}`: checked before anything else of a
/// start opens files, so that a BEAM out of descriptors gets that error
/// rather than whichever step failed first. A few open and close calls.
#[rustler::nif]
fn fd_headroom(env: Env) -> Term {
    if evum_core::limits::files_left(vm::FILES_TO_START) {
        atoms::ok().encode(env)
    } else {
        exhausted_error(env, &Exhausted::OpenFiles)
    }
}

/// The effective uid of the BEAM: VMs of the `host` dist drop privileges when it is 0.
#[rustler::nif]
fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `{ok, {Uid, Gid}}` of a host user, or `{error, not_found}`.
#[rustler::nif(schedule = "DirtyIo")]
fn lookup_user<'a>(env: Env<'a>, name: Term<'a>) -> NifResult<Term<'a>> {
    let name = text(name)?;
    Ok(match nix::unistd::User::from_name(&name) {
        Ok(Some(user)) => (atoms::ok(), (user.uid.as_raw(), user.gid.as_raw())).encode(env),
        _ => (atoms::error(), atoms::not_found()).encode(env),
    })
}

/// `{ok, OsPid}` of a process holding a lock on a disk file (UML locks the
/// disks it writes), `{ok, none}` if none does, or `{error, Reason}`.
#[rustler::nif(schedule = "DirtyIo")]
fn disk_user<'a>(env: Env<'a>, path: Term<'a>) -> NifResult<Term<'a>> {
    use nix::fcntl::{fcntl, FcntlArg};
    let path = PathBuf::from(text(path)?);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) => return Ok((atoms::error(), e.to_string()).encode(env)),
    };
    // Would a write lock over the whole file conflict, and with whom?
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    Ok(
        match fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), FcntlArg::F_GETLK(&mut probe)) {
            Ok(_) if probe.l_type == libc::F_UNLCK as libc::c_short => (atoms::ok(), atoms::none()).encode(env),
            Ok(_) => (atoms::ok(), probe.l_pid).encode(env),
            Err(e) => (atoms::error(), e.desc()).encode(env),
        },
    )
}

rustler::init!("evum_nif");
