//! evum's core: User-Mode Linux VMs as managed host processes, with their
//! consoles, command channels and management consoles. Nothing here knows
//! about the BEAM; `evum_nif` binds it to Erlang.

pub mod config;
pub mod console;
pub mod control;
pub mod fetch;
pub mod gateway;
pub mod image;
pub mod io_loop;
pub mod mconsole;
pub mod options;
pub mod placement;
pub mod process;
pub mod switch;
pub mod vm;
pub mod watchdog;

pub use control::ControlEvent;
pub use io_loop::{Exit, NotRunning, VmEvents, VmHandle};
pub use options::BootOption;
pub use vm::{start, Vm, VmConfig};
