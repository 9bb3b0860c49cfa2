//! The Erlang face of evum_core::kernel: evum's own UML kernel, found in the
//! cache or built on a native thread of its own (minutes: too long for any
//! scheduler). A build reports to a pid, every message tagged with the
//! caller's reference:
//!
//! ```erlang
//! {evum_kernel, Ref, {progress, waiting}}                     % another build holds the lock
//! {evum_kernel, Ref, {progress, {updating, Suite}}}
//! {evum_kernel, Ref, {progress, {downloading, Package, Version, Bytes | undefined}}}
//! {evum_kernel, Ref, {progress, {unpacking, Files}}}
//! {evum_kernel, Ref, {progress, configuring}}
//! {evum_kernel, Ref, {progress, {compiling, Done, Total}}}   % at most one per percent
//! {evum_kernel, Ref, {progress, calibrating}}
//! {evum_kernel, Ref, {ok, Path}}                              % the last message
//! {evum_kernel, Ref, {error, Message}}                        % or this one
//! ```

use std::panic::{self, AssertUnwindSafe};
use std::thread;

use evum_core::kernel::{self, Progress};
use rustler::{Encoder, Env, LocalPid, NifResult, Reference, Term};

use crate::reply::{panic_text, path_binary, Replies};
use crate::{path, text};

mod atoms {
    rustler::atoms! {
        ok, error, undefined, not_built, evum_kernel, progress, waiting, updating, downloading,
        unpacking, configuring, compiling, calibrating, spawn, system,
    }
}

/// The file name of evum's SMP kernel (a binary), beside the one-CPU kernel's.
#[rustler::nif]
fn kernel_smp_binary(env: Env) -> Term {
    kernel::SMP_BINARY.encode(env)
}

/// `{ok, Path}` of the kernel built in this cache, or `not_built`.
#[rustler::nif(schedule = "DirtyIo")]
fn kernel_cached<'a>(env: Env<'a>, cache_dir: Term<'a>) -> NifResult<Term<'a>> {
    Ok(match kernel::cached(&path(cache_dir)?) {
        Some(path) => (atoms::ok(), path_binary(env, &path)).encode(env),
        None => atoms::not_built().encode(env),
    })
}

/// This host's calibrated delay-loop figure, or `undefined`.
#[rustler::nif(schedule = "DirtyIo")]
fn kernel_lpj<'a>(env: Env<'a>, cache_dir: Term<'a>) -> NifResult<Term<'a>> {
    Ok(match kernel::lpj::cached(&path(cache_dir)?) {
        Some(lpj) => lpj.encode(env),
        None => atoms::undefined().encode(env),
    })
}

/// Finds or builds the kernel on a new thread and returns `ok`; the outcome
/// comes as messages to `reply_to` (see the module doc). `mirror` is a
/// Debian archive's address, or `system` for the machine's own.
#[rustler::nif]
fn kernel_build<'a>(
    env: Env<'a>,
    cache_dir: Term<'a>,
    mirror: Term<'a>,
    reply_to: LocalPid,
    reference: Reference<'a>,
) -> NifResult<Term<'a>> {
    let cache_dir = path(cache_dir)?;
    let mirror = match mirror.decode::<rustler::Atom>() {
        Ok(atom) if atom == atoms::system() => None,
        _ => Some(text(mirror)?),
    };
    let mut replies = Replies::new(atoms::evum_kernel(), reply_to, reference);
    let spawned = thread::Builder::new().name("evum-kernel".into()).spawn(move || {
        let mut last_percent = None;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            kernel::ensure(&cache_dir, mirror.as_deref(), &mut |p| {
                if let Progress::Compiling { done, total } = *p {
                    let percent = done * 100 / total.max(1);
                    if last_percent == Some(percent) {
                        return;
                    }
                    last_percent = Some(percent);
                }
                report(&mut replies, p)
            })
        }));
        match outcome {
            Ok(Ok(path)) => replies.send(|env| (atoms::ok(), path_binary(env, &path)).encode(env)),
            Ok(Err(e)) => replies.send(|env| (atoms::error(), e.to_string()).encode(env)),
            Err(panic) => {
                let why = format!("building the kernel failed unexpectedly: {}", panic_text(&*panic));
                replies.send(|env| (atoms::error(), why).encode(env))
            }
        }
    });
    Ok(match spawned {
        Ok(_) => atoms::ok().encode(env),
        Err(e) => (atoms::error(), (atoms::spawn(), e.to_string())).encode(env),
    })
}

fn report(replies: &mut Replies, progress: &Progress) {
    // The final `{ok, Path}` says it.
    if let Progress::Done { .. } = progress {
        return;
    }
    let step = progress.clone();
    replies.send(move |env| {
        let step = match step {
            Progress::Waiting => atoms::waiting().encode(env),
            Progress::Updating { suite } => (atoms::updating(), suite).encode(env),
            Progress::Downloading {
                package,
                version,
                bytes,
            } => {
                let bytes = bytes.map_or(atoms::undefined().encode(env), |b| b.encode(env));
                (atoms::downloading(), package, version, bytes).encode(env)
            }
            Progress::Unpacking { files } => (atoms::unpacking(), files).encode(env),
            Progress::Configuring => atoms::configuring().encode(env),
            Progress::Compiling { done, total } => (atoms::compiling(), done, total).encode(env),
            Progress::Calibrating => atoms::calibrating().encode(env),
            // Never sent (above); here only to name every step.
            Progress::Done { .. } => atoms::ok().encode(env),
        };
        (atoms::progress(), step).encode(env)
    })
}
