//! The Erlang face of evum_core::image::fetch: one native thread per download
//! (they take minutes, too long for any scheduler, dirty ones included),
//! reporting to a pid. Every message is tagged with the caller's reference:
//!
//! ```erlang
//! {evum_fetch, Ref, {progress, {started, Total | undefined, ResumedFrom}}}
//! {evum_fetch, Ref, {progress, {bytes, Done, Total | undefined}}}  % at most ~10 a second
//! {evum_fetch, Ref, {progress, verifying}}
//! {evum_fetch, Ref, {progress, unpacking}}
//! {evum_fetch, Ref, {ok, Path}}                                     % the last message
//! {evum_fetch, Ref, {error, Message}}                               % or this one
//! ```
//!
//! Should ReplyTo die, the download still runs to its end (and fills the
//! cache for the next caller); nothing more is sent.

use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use crate::reply::{panic_text, path_binary, Replies};
use crate::{path, text};
use evum_core::image::fetch::{Checksum, FetchRequest, Progress};
use rustler::{Encoder, Env, LocalPid, NifResult, Reference, Term};

mod atoms {
    rustler::atoms! {
        ok, error, undefined, evum_fetch, progress, started, bytes, verifying, unpacking,
        sha256, md5, bad_request, spawn,
    }
}

/// Between two `bytes` events.
const BYTES_INTERVAL: Duration = Duration::from_millis(100);

/// `undefined`, `{sha256, Hex}` or `{md5, Hex}`.
fn checksum(term: Term) -> NifResult<Option<Checksum>> {
    if term.decode::<rustler::Atom>().ok() == Some(atoms::undefined()) {
        return Ok(None);
    }
    let (kind, hex): (rustler::Atom, Term) = term.decode()?;
    let hex = text(hex)?;
    if kind == atoms::sha256() {
        Ok(Some(Checksum::Sha256(hex)))
    } else if kind == atoms::md5() {
        Ok(Some(Checksum::Md5(hex)))
    } else {
        Err(rustler::Error::BadArg)
    }
}

/// Starts fetching `uri` into `dest` on a new thread and returns `ok`; the
/// outcome comes as messages to `reply_to` (see the module doc). Malformed
/// terms raise badarg; an unsupported URI or a checksum of the wrong shape
/// is `{error, {bad_request, Message}}`.
#[rustler::nif]
fn image_fetch<'a>(
    env: Env<'a>,
    uri: Term<'a>,
    dest: Term<'a>,
    checksum_term: Term<'a>,
    reply_to: LocalPid,
    reference: Reference<'a>,
) -> NifResult<Term<'a>> {
    let request = FetchRequest {
        uri: text(uri)?,
        dest: path(dest)?,
        checksum: checksum(checksum_term)?,
    };
    if let Err(e) = request.check() {
        return Ok((atoms::error(), (atoms::bad_request(), e.to_string())).encode(env));
    }

    let mut reporter = Reporter {
        replies: Replies::new(atoms::evum_fetch(), reply_to, reference),
        last_bytes: None,
    };
    let spawned = thread::Builder::new()
        .name("evum-fetch".into())
        .spawn(move || run(request, &mut reporter));
    Ok(match spawned {
        Ok(_) => atoms::ok().encode(env),
        Err(e) => (atoms::error(), (atoms::spawn(), e.to_string())).encode(env),
    })
}

fn run(request: FetchRequest, reporter: &mut Reporter) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        evum_core::image::fetch::fetch(&request, &mut |p| reporter.progress(p))
    }));
    match outcome {
        Ok(Ok(path)) => reporter.send(|env| (atoms::ok(), path_binary(env, &path)).encode(env)),
        Ok(Err(e)) => match e.exhausted() {
            // `{error, {no_space, Path}}` or `{error, {system_limit, open_files}}`.
            Some(exhausted) => reporter.send(|env| crate::exhausted_error(env, &exhausted)),
            None => reporter.send(|env| (atoms::error(), e.to_string()).encode(env)),
        },
        Err(panic) => {
            let why = format!("fetching {} failed unexpectedly: {}", request.uri, panic_text(&*panic));
            reporter.send(|env| (atoms::error(), why).encode(env))
        }
    }
}

fn size_or_undefined(env: Env, size: Option<u64>) -> Term {
    match size {
        Some(size) => size.encode(env),
        None => atoms::undefined().encode(env),
    }
}

/// Sends one download's messages from its thread.
struct Reporter {
    replies: Replies,
    last_bytes: Option<Instant>,
}

impl Reporter {
    fn progress(&mut self, progress: &Progress) {
        match *progress {
            Progress::Started { total, resumed_from } => {
                self.send_progress(|env| (atoms::started(), size_or_undefined(env, total), resumed_from).encode(env))
            }
            Progress::Bytes { done, total } => {
                let now = Instant::now();
                let due = self.last_bytes.is_none_or(|last| now - last >= BYTES_INTERVAL);
                if due || Some(done) == total {
                    self.last_bytes = Some(now);
                    self.send_progress(|env| (atoms::bytes(), done, size_or_undefined(env, total)).encode(env))
                }
            }
            Progress::Verifying => self.send_progress(|env| atoms::verifying().encode(env)),
            Progress::Unpacking => self.send_progress(|env| atoms::unpacking().encode(env)),
            // The final `{ok, Path}` says it.
            Progress::Done { .. } => {}
        }
    }

    fn send_progress(&mut self, event: impl for<'e> FnOnce(Env<'e>) -> Term<'e>) {
        self.send(|env| (atoms::progress(), event(env)).encode(env))
    }

    fn send(&mut self, payload: impl for<'e> FnOnce(Env<'e>) -> Term<'e>) {
        self.replies.send(payload)
    }
}
