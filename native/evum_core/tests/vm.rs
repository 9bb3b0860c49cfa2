//! Real UML guests through evum_core: boot, console, command channel, exits,
//! and what is left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
mod common;

use evum_core::{image, vm::control, vm::io_loop::Signal, ControlEvent, Exit, Vm, VmConfig, VmEvents};

#[derive(Debug)]
enum Event {
    Line(String),
    Control(ControlEvent),
    Exited(Exit),
}

struct ToChannel(Sender<Event>);

impl VmEvents for ToChannel {
    fn console_line(&mut self, line: &[u8]) {
        let _ = self.0.send(Event::Line(String::from_utf8_lossy(line).into_owned()));
    }
    fn control(&mut self, event: ControlEvent) {
        let _ = self.0.send(Event::Control(event));
    }
    fn exited(&mut self, exit: Exit) {
        let _ = self.0.send(Event::Exited(exit));
    }
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-cache")
}

fn boot() -> (Vm, Receiver<Event>) {
    let image = image::busybox_image(Path::new("/bin/busybox"), &cache_dir()).expect("image");
    let (tx, rx) = unbounded();
    let config = VmConfig {
        kernel: common::kernel(),
        options: image.boot_options(),
        umid: None,
        uml_dir: None,
        groups: Vec::new(),
    };
    let vm = evum_core::start(config, Box::new(ToChannel(tx))).expect("start");
    wait_for(&rx, Duration::from_secs(30), |e| {
        matches!(e, Event::Control(ControlEvent::Ready))
    });
    (vm, rx)
}

/// Waits for an event matching `want`, returning everything seen before it.
fn wait_for(rx: &Receiver<Event>, timeout: Duration, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if want(&e) => {
                seen.push(e);
                return seen;
            }
            Ok(e) => seen.push(e),
            Err(_) => panic!("timed out; saw {seen:?}"),
        }
    }
}

fn run(vm: &Vm, rx: &Receiver<Event>, id: u64, cmd: &str) -> (i32, Vec<u8>) {
    vm.handle
        .write_control(control::run_request(id, cmd.as_bytes()))
        .unwrap();
    let seen = wait_for(
        rx,
        Duration::from_secs(10),
        |e| matches!(e, Event::Control(ControlEvent::Result { id: i, .. }) if *i == id),
    );
    match seen.into_iter().last() {
        Some(Event::Control(ControlEvent::Result { status, output, .. })) => (status, output),
        other => panic!("no result: {other:?}"),
    }
}

fn live_uml_processes(pid: i32) -> bool {
    // Helper processes keep the group id; zombies waiting for init do not count.
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let after = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields.len() > 3 && fields[0] != "Z" && fields[2] == pid.to_string()
    })
}

fn assert_gone(vm: &Vm) {
    let pid = vm.handle.os_pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_uml_processes(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!live_uml_processes(pid), "processes of group {pid} survive");
    assert!(!vm.runtime_dir.exists(), "{} left behind", vm.runtime_dir.display());
}

#[test]
fn console_echoes_and_the_guest_knows_its_name() {
    let (vm, rx) = boot();
    vm.handle.write_console(b"hostname\n".to_vec()).unwrap();
    wait_for(
        &rx,
        Duration::from_secs(10),
        |e| matches!(e, Event::Line(l) if l == "evm"),
    );
    vm.handle.write_console(b"exit\n".to_vec()).unwrap();
    let seen = wait_for(&rx, Duration::from_secs(10), |e| matches!(e, Event::Exited(_)));
    assert!(matches!(seen.last(), Some(Event::Exited(Exit::Status(0)))), "{seen:?}");
    assert_gone(&vm);
}

#[test]
fn commands_return_exact_output_and_status() {
    let (vm, rx) = boot();
    assert_eq!(run(&vm, &rx, 1, "printf 'a\\nb'"), (0, b"a\nb".to_vec()));
    assert_eq!(run(&vm, &rx, 2, "echo oops >&2; exit 3"), (3, b"oops\n".to_vec()));
    assert_eq!(run(&vm, &rx, 3, "echo one\necho two"), (0, b"one\ntwo\n".to_vec()));
    let (status, output) = run(&vm, &rx, 4, "seq 1 20000");
    assert_eq!(status, 0);
    assert_eq!(output.iter().filter(|&&b| b == b'\n').count(), 20000);
    vm.handle.signal(Signal::SIGTERM, false).unwrap();
    wait_for(&rx, Duration::from_secs(10), |e| matches!(e, Event::Exited(_)));
    assert_gone(&vm);
}

#[test]
fn a_killed_main_process_takes_its_helpers_and_files_with_it() {
    let (vm, rx) = boot();
    assert!(vm.mconsole_socket().exists());
    vm.handle.signal(Signal::SIGKILL, false).unwrap();
    let seen = wait_for(&rx, Duration::from_secs(10), |e| matches!(e, Event::Exited(_)));
    assert!(matches!(seen.last(), Some(Event::Exited(Exit::Signal(9)))), "{seen:?}");
    assert_gone(&vm);
    assert!(vm.handle.write_console(b"x\n".to_vec()).is_err());
}

#[test]
fn dropping_the_handle_kills_the_vm() {
    let (vm, rx) = boot();
    let Vm {
        handle,
        runtime_dir,
        umid,
        ..
    } = vm;
    let pid = handle.os_pid();
    drop(handle);
    wait_for(&rx, Duration::from_secs(10), |e| matches!(e, Event::Exited(_)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_uml_processes(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!live_uml_processes(pid));
    assert!(!runtime_dir.exists(), "{umid} left its directory");
}

#[test]
fn a_missing_kernel_is_a_clear_error() {
    let (tx, _rx) = unbounded();
    let config = VmConfig {
        kernel: "/nonexistent/linux".into(),
        options: vec![],
        umid: None,
        uml_dir: None,
        groups: Vec::new(),
    };
    let err = evum_core::start(config, Box::new(ToChannel(tx))).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}
