//! evum's core: User-Mode Linux VMs as managed host processes, with their
//! consoles, command channels and management consoles, the Ethernet switch
//! they meet on, the gateway out of it, their images and their kernel.
//! Nothing here knows about the BEAM; `evum_nif` binds it to Erlang.
//!
//! One folder per subsystem:
//! - [`vm`]: one VM's host process, its I/O loop, console, command channel,
//!   boot options, CPU placement and the watchdog that outlives the BEAM.
//! - [`switch`]: the Ethernet switch (daemon and bess transports).
//! - [`gateway`]: user networking (libslirp) as a port of a switch.
//! - [`image`]: configuration, downloads and the root images guests boot.
//! - [`kernel`]: evum's own UML kernel, built once per machine.
//! - [`mconsole`]: the client of UML's management console.
//! - [`limits`]: host resources that run out (open files, disk space), named.

pub mod gateway;
pub mod image;
pub mod kernel;
pub mod limits;
pub mod mconsole;
pub mod switch;
pub mod vm;

#[cfg(test)]
mod testing;

pub use vm::control::ControlEvent;
pub use vm::io_loop::{Exit, NotRunning, VmEvents, VmHandle};
pub use vm::options::BootOption;
pub use vm::{start, Vm, VmConfig};
