//! What a guest boots from, and what says where it comes from: the
//! configuration of networks and images ([`config`]), downloads into the
//! cache ([`fetch`]), and evum's default root, an initramfs and a disk built
//! from the host's static busybox ([`busybox`]).

pub mod busybox;
pub mod config;
pub mod fetch;

pub use busybox::{busybox_image, BusyboxImage, ImageError};
