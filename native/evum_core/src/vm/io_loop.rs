//! One mio event loop thread carries the I/O of every VM.
//!
//! It reads each VM's console and command channel, splits and parses what it
//! reads, hands lines and events to the VM's [`VmEvents`], writes queued input
//! without ever blocking, and notices the exit of the UML process through its
//! pidfd. When a VM's process exits, the loop kills whatever is left of its
//! process group (UML's helper processes), reaps it, delivers the output still
//! in the pipe, removes the VM's runtime directory and only then reports the
//! exit, so an owner never sees an exit before the last line.
//!
//! A VM's console can be held ([`ConsoleFlow::Hold`]): the loop stops
//! reading it, the pipe fills, and the guest's writes to its console wait,
//! as on a terminal whose reader has stopped. Or its lines can be dropped
//! ([`ConsoleFlow::Drop`]): the loop reads on, so the guest never waits,
//! and counts the lines instead of delivering them; when delivery resumes,
//! the VM's events hear how many went. Its owner decides when (see evum_vm's
//! backlog), so a guest cannot fill a mailbox that is not read.
//!
//! Other threads talk to the loop through a channel and a mio [`Waker`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
pub use nix::sys::signal::Signal;
use nix::sys::signal::{kill, killpg};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::vm::console::LineSplitter;
use crate::vm::control::{self, ControlEvent, ControlParser};
use crate::vm::process::Spawned;

/// How long a partial line waits for more output before it is delivered on
/// its own. The pieces of one guest write reach the console microseconds
/// apart, so a few milliseconds keep lines whole. A shell's prompt (ending
/// in `# ` or `$ `) goes at once: nothing follows it until someone types.
const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(4);
/// How long after the process exit the loop waits for the console pipe to
/// close before it gives up on output still held by stray processes.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;
const WAKER: Token = Token(usize::MAX);

/// How a VM's UML process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Status(i32),
    Signal(i32),
}

/// Receives what happens to one VM. Called on the loop thread: implementations
/// must not block.
pub trait VmEvents: Send {
    fn console_line(&mut self, line: &[u8]);
    /// `lines` console lines were dropped ([`ConsoleFlow::Drop`]) since
    /// delivery last stopped; called as it resumes, before the next line.
    fn console_dropped(&mut self, _lines: u64) {}
    fn control(&mut self, event: ControlEvent);
    /// The last call for this VM.
    fn exited(&mut self, exit: Exit);
}

/// What the loop does with a VM's console output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleFlow {
    /// Read it and deliver every line.
    Deliver,
    /// Stop reading it: the guest's writes wait, as on a terminal nobody reads.
    Hold,
    /// Read it and count its lines instead of delivering them: the guest
    /// goes on, its output is lost.
    Drop,
}

/// A live VM as other threads see it. Dropping it kills the VM.
#[derive(Debug)]
pub struct VmHandle {
    id: u64,
    pid: Pid,
    exited: Arc<AtomicBool>,
    /// Console lines dropped so far (the loop counts them).
    console_dropped: Arc<AtomicU64>,
}

/// The VM has exited; its channels are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VM is not running")]
pub struct NotRunning;

impl VmHandle {
    pub fn os_pid(&self) -> i32 {
        self.pid.as_raw()
    }

    pub fn is_running(&self) -> bool {
        !self.exited.load(Ordering::Acquire)
    }

    /// Queues bytes for the guest console.
    pub fn write_console(&self, data: Vec<u8>) -> Result<(), NotRunning> {
        self.command(Command::Write {
            id: self.id,
            channel: Channel::Console,
            data,
        })
    }

    /// Queues bytes for the command channel.
    pub fn write_control(&self, data: Vec<u8>) -> Result<(), NotRunning> {
        self.command(Command::Write {
            id: self.id,
            channel: Channel::Control,
            data,
        })
    }

    /// Asks the guest's command loop to run `command` as request `request`,
    /// whose result may have at most `max_output` bytes (at most
    /// [`control::MAX_OUTPUT`]): past that it is
    /// [`ControlEvent::OutputTooLarge`] and its bytes are not kept.
    pub fn run_command(&self, request: u64, command: &[u8], max_output: u64) -> Result<(), NotRunning> {
        self.command(Command::Run {
            id: self.id,
            request,
            data: control::run_request(request, command),
            max_output,
        })
    }

    /// Asks the guest's command loop to sync its file systems; the answer
    /// comes as request `request`'s result, with no output.
    pub fn sync_disks(&self, request: u64) -> Result<(), NotRunning> {
        self.command(Command::Run {
            id: self.id,
            request,
            data: control::sync_request(request),
            max_output: 0,
        })
    }

    /// Delivers, holds or drops the guest's console output from now on.
    pub fn set_console_flow(&self, flow: ConsoleFlow) -> Result<(), NotRunning> {
        self.command(Command::ConsoleFlow { id: self.id, flow })
    }

    /// Console lines dropped so far ([`ConsoleFlow::Drop`]).
    pub fn console_dropped(&self) -> u64 {
        self.console_dropped.load(Ordering::Relaxed)
    }

    /// Sends `signal` to the UML main process, or to its whole process group.
    pub fn signal(&self, signal: Signal, whole_group: bool) -> Result<(), NotRunning> {
        self.command(Command::Signal {
            id: self.id,
            signal,
            whole_group,
        })
    }

    fn command(&self, command: Command) -> Result<(), NotRunning> {
        if !self.is_running() {
            return Err(NotRunning);
        }
        io_loop().send(command);
        Ok(())
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        // Only signal here: this may run in a garbage collector's thread.
        if self.is_running() {
            io_loop().send(Command::Signal {
                id: self.id,
                signal: Signal::SIGKILL,
                whole_group: true,
            });
        }
    }
}

/// Hands a freshly spawned VM to the loop. `runtime_dir` is removed once the
/// VM has exited; `on_gone` runs after that, on the loop thread.
pub fn adopt(
    spawned: Spawned,
    runtime_dir: Option<PathBuf>,
    on_gone: Box<dyn FnOnce() + Send>,
    events: Box<dyn VmEvents>,
) -> VmHandle {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let exited = Arc::new(AtomicBool::new(false));
    let console_dropped = Arc::new(AtomicU64::new(0));
    let pid = spawned.pid;
    io_loop().send(Command::Adopt(Box::new(Adopted {
        id,
        spawned,
        runtime_dir,
        on_gone,
        events,
        exited: exited.clone(),
        console_dropped: console_dropped.clone(),
    })));
    VmHandle {
        id,
        pid,
        exited,
        console_dropped,
    }
}

struct Adopted {
    id: u64,
    spawned: Spawned,
    runtime_dir: Option<PathBuf>,
    on_gone: Box<dyn FnOnce() + Send>,
    events: Box<dyn VmEvents>,
    exited: Arc<AtomicBool>,
    console_dropped: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Console,
    Control,
}

enum Command {
    Adopt(Box<Adopted>),
    Write {
        id: u64,
        channel: Channel,
        data: Vec<u8>,
    },
    Run {
        id: u64,
        request: u64,
        data: Vec<u8>,
        max_output: u64,
    },
    Signal {
        id: u64,
        signal: Signal,
        whole_group: bool,
    },
    ConsoleFlow {
        id: u64,
        flow: ConsoleFlow,
    },
}

struct LoopHandle {
    tx: Sender<Command>,
    waker: Option<Waker>,
}

impl LoopHandle {
    fn send(&self, command: Command) {
        if self.tx.send(command).is_ok() {
            if let Some(waker) = &self.waker {
                if let Err(e) = waker.wake() {
                    log::error!("evum: cannot wake the I/O loop: {e}");
                }
            }
        }
    }
}

fn io_loop() -> &'static LoopHandle {
    static LOOP: OnceLock<LoopHandle> = OnceLock::new();
    LOOP.get_or_init(|| {
        let (tx, rx) = unbounded();
        let started = Poll::new().and_then(|poll| {
            let waker = Waker::new(poll.registry(), WAKER)?;
            std::thread::Builder::new()
                .name("evum-io".into())
                .spawn(move || IoLoop::new(poll, rx).run())?;
            Ok(waker)
        });
        match started {
            Ok(waker) => LoopHandle { tx, waker: Some(waker) },
            Err(e) => {
                log::error!("evum: cannot start the I/O loop: {e}");
                LoopHandle { tx, waker: None }
            }
        }
    })
}

/// A pipe end with the bytes still to be written to it.
struct Writer {
    pipe: Option<File>,
    pending: VecDeque<u8>,
    wants_writable: bool,
}

struct Vm {
    pid: Pid,
    pidfd: Option<OwnedFd>,
    console_out: Option<File>,
    control_out: Option<File>,
    console_in: Writer,
    control_in: Writer,
    lines: LineSplitter,
    control: ControlParser,
    events: Box<dyn VmEvents>,
    flush_partial_at: Option<Instant>,
    /// Whether console lines are delivered, and the count of those that
    /// were not (see the module's comment).
    console: ConsoleState,
    exit: Option<Exit>,
    give_up_drain_at: Option<Instant>,
    runtime_dir: Option<PathBuf>,
    on_gone: Option<Box<dyn FnOnce() + Send>>,
    exited: Arc<AtomicBool>,
}

/// A VM's console flow and the lines it has dropped.
struct ConsoleState {
    flow: ConsoleFlow,
    /// Dropped since delivery stopped: the events hear it when it resumes.
    unreported: u64,
    /// Every line dropped, as [`VmHandle::console_dropped`] reads it.
    dropped: Arc<AtomicU64>,
}

impl ConsoleState {
    /// Hands a line to the events, or counts it while dropping.
    fn line(&mut self, events: &mut dyn VmEvents, line: &[u8]) {
        if self.flow == ConsoleFlow::Drop {
            self.unreported += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            events.console_line(line);
        }
    }

    /// Delivery goes on: the events hear what was dropped first.
    fn report_dropped(&mut self, events: &mut dyn VmEvents) {
        if self.unreported > 0 {
            events.console_dropped(std::mem::take(&mut self.unreported));
        }
    }
}

// Each VM owns five fds; the token says which VM (id) and which fd (slot).
const SLOTS: u64 = 8;
const PIDFD: u64 = 0;
const CONSOLE_OUT: u64 = 1;
const CONTROL_OUT: u64 = 2;
const CONSOLE_IN: u64 = 3;
const CONTROL_IN: u64 = 4;

fn token(id: u64, slot: u64) -> Token {
    Token((id * SLOTS + slot) as usize)
}

struct IoLoop {
    poll: Poll,
    rx: Receiver<Command>,
    vms: HashMap<u64, Vm>,
    buf: Vec<u8>,
}

impl IoLoop {
    fn new(poll: Poll, rx: Receiver<Command>) -> Self {
        IoLoop {
            poll,
            rx,
            vms: HashMap::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("evum: I/O loop poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    let raw = event.token().0 as u64;
                    self.ready(raw / SLOTS, raw % SLOTS);
                }
            }
            while let Ok(command) = self.rx.try_recv() {
                self.handle(command);
            }
            self.run_deadlines();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.vms
            .values()
            .flat_map(|vm| [vm.flush_partial_at, vm.give_up_drain_at])
            .flatten()
            .min()
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Adopt(adopted) => self.adopt(*adopted),
            Command::Write { id, channel, data } => self.write(id, channel, data),
            Command::Run {
                id,
                request,
                data,
                max_output,
            } => {
                // The limit is known before the guest can answer.
                if let Some(vm) = self.vms.get_mut(&id) {
                    vm.control.expect(request, max_output);
                }
                self.write(id, Channel::Control, data);
            }
            Command::ConsoleFlow { id, flow } => self.set_console_flow(id, flow),
            Command::Signal {
                id,
                signal,
                whole_group,
            } => {
                // Once reaped, the pid may belong to someone else: never signal it then.
                if let Some(vm) = self.vms.get(&id).filter(|vm| vm.exit.is_none()) {
                    let _ = if whole_group {
                        killpg(vm.pid, signal)
                    } else {
                        kill(vm.pid, signal)
                    };
                }
            }
        }
    }

    /// Queues bytes for one of the VM's input pipes and writes what it takes.
    fn write(&mut self, id: u64, channel: Channel, data: Vec<u8>) {
        let Some(vm) = self.vms.get_mut(&id) else { return };
        if channel == Channel::Console {
            // What was on the screen when the user typed (a prompt) is a
            // line of its own, not a prefix of the echo.
            let (events, console) = (&mut *vm.events, &mut vm.console);
            vm.lines.flush(|line| console.line(events, line));
            vm.flush_partial_at = None;
        }
        let (writer, slot) = match channel {
            Channel::Console => (&mut vm.console_in, CONSOLE_IN),
            Channel::Control => (&mut vm.control_in, CONTROL_IN),
        };
        writer.pending.extend(data);
        flush_writer(&self.poll, writer, token(id, slot));
    }

    /// Delivers, holds or drops the console from now on. A hold stops
    /// watching the pipe; registering it again reports it readable at once
    /// if output waits in it.
    fn set_console_flow(&mut self, id: u64, flow: ConsoleFlow) {
        let Some(vm) = self.vms.get_mut(&id) else { return };
        let was = std::mem::replace(&mut vm.console.flow, flow);
        if flow == ConsoleFlow::Deliver {
            vm.console.report_dropped(&mut *vm.events);
        }
        let watch = match (was == ConsoleFlow::Hold, flow == ConsoleFlow::Hold) {
            (false, true) => false,
            (true, false) => true,
            _ => return,
        };
        let Some(pipe) = &vm.console_out else { return };
        let mut source = SourceFd(&pipe.as_raw_fd());
        let registry = self.poll.registry();
        let result = if watch {
            registry.register(&mut source, token(id, CONSOLE_OUT), Interest::READABLE)
        } else {
            registry.deregister(&mut source)
        };
        if let Err(e) = result {
            log::error!(
                "evum: cannot {} a VM's console: {e}",
                if watch { "resume" } else { "hold" }
            );
        }
    }

    fn adopt(&mut self, a: Adopted) {
        let s = a.spawned;
        let registry = self.poll.registry();
        let register = |fd: &OwnedFd, slot: u64| {
            set_nonblocking(fd);
            if let Err(e) = registry.register(&mut SourceFd(&fd.as_raw_fd()), token(a.id, slot), Interest::READABLE) {
                log::error!("evum: cannot watch a VM fd: {e}");
            }
        };
        register(&s.pidfd, PIDFD);
        register(&s.console_out, CONSOLE_OUT);
        register(&s.control_out, CONTROL_OUT);
        set_nonblocking(&s.console_in);
        set_nonblocking(&s.control_in);
        let writer = |fd: OwnedFd| Writer {
            pipe: Some(File::from(fd)),
            pending: VecDeque::new(),
            wants_writable: false,
        };
        self.vms.insert(
            a.id,
            Vm {
                pid: s.pid,
                pidfd: Some(s.pidfd),
                console_out: Some(File::from(s.console_out)),
                control_out: Some(File::from(s.control_out)),
                console_in: writer(s.console_in),
                control_in: writer(s.control_in),
                lines: LineSplitter::default(),
                control: ControlParser::default(),
                events: a.events,
                flush_partial_at: None,
                console: ConsoleState {
                    flow: ConsoleFlow::Deliver,
                    unreported: 0,
                    dropped: a.console_dropped,
                },
                exit: None,
                give_up_drain_at: None,
                runtime_dir: a.runtime_dir,
                on_gone: Some(a.on_gone),
                exited: a.exited,
            },
        );
    }

    fn ready(&mut self, id: u64, slot: u64) {
        let Some(vm) = self.vms.get_mut(&id) else { return };
        match slot {
            PIDFD => self.process_exited(id),
            // An event from before a hold.
            CONSOLE_OUT if vm.console.flow == ConsoleFlow::Hold => {}
            CONSOLE_OUT => {
                let (events, console) = (&mut *vm.events, &mut vm.console);
                let open = read_all(&mut vm.console_out, &mut self.buf, |bytes| {
                    vm.lines.feed(bytes, |line| console.line(events, line));
                });
                if vm.lines.partial_is_prompt() {
                    vm.lines.flush(|line| console.line(events, line));
                }
                vm.flush_partial_at = vm.lines.has_partial().then(|| Instant::now() + PARTIAL_LINE_DELAY);
                if !open {
                    self.close_reader(id, CONSOLE_OUT);
                }
            }
            CONTROL_OUT => {
                let open = read_all(&mut vm.control_out, &mut self.buf, |bytes| {
                    vm.control.feed(bytes, |event| vm.events.control(event));
                });
                if !open {
                    self.close_reader(id, CONTROL_OUT);
                }
            }
            CONSOLE_IN => flush_writer(&self.poll, &mut vm.console_in, token(id, CONSOLE_IN)),
            CONTROL_IN => flush_writer(&self.poll, &mut vm.control_in, token(id, CONTROL_IN)),
            _ => {}
        }
    }

    fn close_reader(&mut self, id: u64, slot: u64) {
        if let Some(vm) = self.vms.get_mut(&id) {
            let pipe = if slot == CONSOLE_OUT {
                vm.console_out.take()
            } else {
                vm.control_out.take()
            };
            if let Some(pipe) = pipe {
                let _ = self.poll.registry().deregister(&mut SourceFd(&pipe.as_raw_fd()));
            }
        }
        self.finish_if_done(id);
    }

    /// The UML main process has exited (it is a zombie until we reap it).
    fn process_exited(&mut self, id: u64) {
        let Some(vm) = self.vms.get_mut(&id) else { return };
        // Kill UML's helpers before reaping: while the main process is an
        // unreaped zombie its pid, and so the group id, cannot be reused.
        let _ = killpg(vm.pid, Signal::SIGKILL);
        let exit = match waitpid(vm.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Status(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => Exit::Signal(signal as i32),
            Ok(WaitStatus::StillAlive) => return,
            Ok(other) => {
                log::warn!("evum: unexpected wait status {other:?}");
                return;
            }
            // Someone else reaped it: the exit status is lost, not the exit.
            Err(_) => Exit::Status(-1),
        };
        vm.exit = Some(exit);
        vm.exited.store(true, Ordering::Release);
        if let Some(pidfd) = vm.pidfd.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
        vm.give_up_drain_at = Some(Instant::now() + DRAIN_AFTER_EXIT);
        // What is left in the pipe is bounded by its size: deliver it.
        self.set_console_flow(id, ConsoleFlow::Deliver);
        self.finish_if_done(id);
    }

    /// Reports the exit once the process is reaped and the console has been
    /// read to its end (or the wait for that has timed out).
    fn finish_if_done(&mut self, id: u64) {
        let Some(vm) = self.vms.get(&id) else { return };
        let drained = vm.console_out.is_none() && vm.control_out.is_none();
        let gave_up = vm.give_up_drain_at.is_some_and(|t| Instant::now() >= t);
        if vm.exit.is_none() || !(drained || gave_up) {
            return;
        }
        let Some(mut vm) = self.vms.remove(&id) else { return };
        for pipe in [vm.console_out.take(), vm.control_out.take()].into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
        for writer in [&mut vm.console_in, &mut vm.control_in] {
            if let Some(pipe) = writer.pipe.take() {
                if writer.wants_writable {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&pipe.as_raw_fd()));
                }
            }
        }
        let (events, console) = (&mut *vm.events, &mut vm.console);
        vm.lines.flush(|line| console.line(events, line));
        if let Some(dir) = &vm.runtime_dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("evum: cannot remove {}: {e}", dir.display());
                }
            }
        }
        crate::vm::watchdog::forget(vm.pid.as_raw());
        if let Some(on_gone) = vm.on_gone.take() {
            on_gone();
        }
        if let Some(exit) = vm.exit {
            vm.events.exited(exit);
        }
    }

    fn run_deadlines(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .vms
            .iter()
            .filter(|(_, vm)| {
                [vm.flush_partial_at, vm.give_up_drain_at]
                    .into_iter()
                    .flatten()
                    .any(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(vm) = self.vms.get_mut(&id) {
                if vm.flush_partial_at.is_some_and(|t| t <= now) {
                    vm.flush_partial_at = None;
                    let (events, console) = (&mut *vm.events, &mut vm.console);
                    vm.lines.flush(|line| console.line(events, line));
                }
            }
            self.finish_if_done(id);
        }
    }
}

/// Reads until the pipe would block. Returns false at end of file or on error.
fn read_all(pipe: &mut Option<File>, buf: &mut [u8], mut consume: impl FnMut(&[u8])) -> bool {
    let Some(file) = pipe else { return false };
    loop {
        match file.read(buf) {
            Ok(0) => return false,
            Ok(n) => consume(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Writes what it can; asks to be told when the pipe drains if bytes remain.
fn flush_writer(poll: &Poll, writer: &mut Writer, token: Token) {
    let Some(pipe) = &mut writer.pipe else {
        writer.pending.clear();
        return;
    };
    while !writer.pending.is_empty() {
        let (front, _) = writer.pending.as_slices();
        match pipe.write(front) {
            Ok(n) => {
                writer.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // The guest side is gone: nobody will read these bytes.
                writer.pending.clear();
            }
        }
    }
    let want = !writer.pending.is_empty();
    if want != writer.wants_writable {
        let mut source = SourceFd(&pipe.as_raw_fd());
        let result = if want {
            poll.registry().register(&mut source, token, Interest::WRITABLE)
        } else {
            poll.registry().deregister(&mut source)
        };
        if let Err(e) = result {
            log::error!("evum: cannot watch a VM input pipe: {e}");
        }
        writer.wants_writable = want;
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        lines: Vec<Vec<u8>>,
        dropped: Vec<u64>,
    }

    impl VmEvents for Seen {
        fn console_line(&mut self, line: &[u8]) {
            self.lines.push(line.to_vec());
        }
        fn console_dropped(&mut self, lines: u64) {
            self.dropped.push(lines);
        }
        fn control(&mut self, _: ControlEvent) {}
        fn exited(&mut self, _: Exit) {}
    }

    #[test]
    fn dropped_lines_are_counted_and_told_once_as_delivery_resumes() {
        let total = Arc::new(AtomicU64::new(0));
        let mut console = ConsoleState {
            flow: ConsoleFlow::Deliver,
            unreported: 0,
            dropped: total.clone(),
        };
        let mut seen = Seen::default();
        console.line(&mut seen, b"a");
        console.flow = ConsoleFlow::Drop;
        for _ in 0..3 {
            console.line(&mut seen, b"lost");
        }
        console.flow = ConsoleFlow::Deliver;
        console.report_dropped(&mut seen);
        console.report_dropped(&mut seen);
        console.line(&mut seen, b"b");
        assert_eq!(seen.lines, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(seen.dropped, vec![3]);
        assert_eq!(total.load(Ordering::Relaxed), 3);
    }
}
