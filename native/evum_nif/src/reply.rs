//! Messages from a native thread that works for one caller: each is
//! `{Tag, Ref, Payload}`, with the caller's reference, until the caller
//! turns out to be dead (the work goes on; nothing more is sent).

use std::any::Any;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustler::env::SavedTerm;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NewBinary, OwnedEnv, Reference, Term};

pub struct Replies {
    tag: Atom,
    /// Holds `reference` across sends, which clear `message`.
    kept: OwnedEnv,
    reference: SavedTerm,
    message: OwnedEnv,
    reply_to: LocalPid,
    caller_gone: bool,
}

impl Replies {
    /// Replies to `reply_to`, tagged `tag` and `reference`.
    pub fn new(tag: Atom, reply_to: LocalPid, reference: Reference) -> Replies {
        let kept = OwnedEnv::new();
        let reference = kept.save(reference);
        Replies {
            tag,
            kept,
            reference,
            message: OwnedEnv::new(),
            reply_to,
            caller_gone: false,
        }
    }

    /// Sends `{Tag, Ref, Payload}`.
    pub fn send(&mut self, payload: impl for<'e> FnOnce(Env<'e>) -> Term<'e>) {
        if self.caller_gone {
            return;
        }
        let Replies {
            tag,
            kept,
            reference,
            message,
            reply_to,
            ..
        } = self;
        let tag = *tag;
        let sent = message.send_and_clear(reply_to, |env| {
            let reference = kept.run(|kept_env| reference.load(kept_env).in_env(env));
            (tag, reference, payload(env)).encode(env)
        });
        self.caller_gone = sent.is_err();
    }
}

/// What a caught panic said.
pub fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// The path's bytes as they are, UTF-8 or not.
pub fn path_binary<'a>(env: Env<'a>, path: &Path) -> Term<'a> {
    let binary: Binary = NewBinary::from_slice(env, path.as_os_str().as_bytes()).into();
    binary.encode(env)
}
