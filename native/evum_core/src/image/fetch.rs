//! Image downloads: verified, decompressed, resumable.
//!
//! [`fetch`] turns a URI into an image on disk at `dest`, once: a `dest` that
//! exists is the cache and is returned at once. Beside it live, while a fetch
//! runs, three other names:
//!
//! - `<dest>.lock`: held (flock) for the whole fetch, so two fetchers of one
//!   image, threads or processes, take turns; the second finds it cached.
//!   Its holder removes it when done; a fetcher that then gets the lock of
//!   a file no longer at that path takes the lock anew.
//! - `<dest>.part`: the bytes as the source publishes them. A transfer cut
//!   short leaves it, and the next fetch resumes with `Range: bytes=N-`.
//! - `<dest>.unpack`: the decompressed file or unpacked tar directory, renamed
//!   to `dest` only when complete, so `dest` is never a half image.
//!
//! Files are made mode 0644 and directories 0755 whatever the umask: VMs may
//! run as an unprivileged user that must read the cache.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::digest::DynDigest;

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A server silent this long is taken to have gone; the `.part` is kept.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const BUFFER_SIZE: usize = 64 * 1024;

/// What to fetch and where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// `http://`, `https://` or `file://`. Its file name says how to unpack
    /// (`.gz`, `.bz2`, `.xz`, `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`, `.tar.xz`).
    pub uri: String,
    /// The image: a file, or a directory for tar archives.
    pub dest: PathBuf,
    /// Checked over the bytes as downloaded, before unpacking.
    pub checksum: Option<Checksum>,
}

impl FetchRequest {
    /// Refuses, without any I/O, a URI that cannot be fetched or a checksum
    /// that is not hexadecimal of the right length. [`fetch`] does too.
    pub fn check(&self) -> Result<(), FetchError> {
        Source::parse(&self.uri)?;
        match self.checksum.as_ref().filter(|c| !c.is_well_formed()) {
            Some(checksum) => Err(FetchError::MalformedChecksum {
                uri: self.uri.clone(),
                algorithm: checksum.algorithm(),
                checksum: checksum.hex().to_string(),
                digits: checksum.digits(),
            }),
            None => Ok(()),
        }
    }
}

/// A published digest, in hexadecimal of either case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    Md5(String),
}

impl Checksum {
    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Md5(_) => "md5",
        }
    }

    fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(hex) | Checksum::Md5(hex) => hex,
        }
    }

    fn digits(&self) -> usize {
        match self {
            Checksum::Sha256(_) => 64,
            Checksum::Md5(_) => 32,
        }
    }

    fn hasher(&self) -> Box<dyn DynDigest> {
        match self {
            Checksum::Sha256(_) => Box::new(sha2::Sha256::default()),
            Checksum::Md5(_) => Box::new(md5::Md5::default()),
        }
    }

    fn is_well_formed(&self) -> bool {
        let hex = self.hex();
        hex.len() == self.digits() && hex.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// How a fetch is getting on, in this order: `Started`, any number of
/// `Bytes`, `Verifying` (with a checksum), `Unpacking` (for compressed or tar
/// images), `Done`. A cached image gives only `Done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The source answered; `total` counts the whole file, including the
    /// `resumed_from` bytes an earlier run left in `.part`.
    Started {
        total: Option<u64>,
        resumed_from: u64,
    },
    /// `done` counts from the start of the file, resumed bytes included.
    Bytes {
        done: u64,
        total: Option<u64>,
    },
    Verifying,
    Unpacking,
    Done {
        path: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{uri}: not a URI evum can fetch (http://, https:// or file:///absolute/path)")]
    UnsupportedUri { uri: String },
    #[error("{uri}: {algorithm} checksum {checksum:?} is not {digits} hexadecimal digits")]
    MalformedChecksum {
        uri: String,
        algorithm: &'static str,
        checksum: String,
        digits: usize,
    },
    #[error("{uri}: {why}")]
    Request { uri: String, why: String },
    #[error("{}: {why}", .path.display())]
    UnsharedSource { path: PathBuf, why: &'static str },
    #[error("{uri}: the server answered HTTP {status}")]
    Status { uri: String, status: u16 },
    #[error(
        "download of {uri} cut short after {done} of {} bytes ({why}); {} is kept to resume",
        .total.map_or_else(|| "unknown".to_string(), |t| t.to_string()),
        .part.display()
    )]
    Interrupted {
        uri: String,
        done: u64,
        total: Option<u64>,
        part: PathBuf,
        why: String,
    },
    #[error("{uri}: {algorithm} checksum mismatch: expected {expected}, got {got}")]
    ChecksumMismatch {
        uri: String,
        algorithm: &'static str,
        expected: String,
        got: String,
    },
    #[error("{uri}: archive entry {entry:?} would land outside {}", .dir.display())]
    UnsafeEntry { uri: String, entry: String, dir: PathBuf },
    #[error("unpacking {uri} into {}: {source}", .path.display())]
    Unpack {
        uri: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FetchError {
    /// The host resource the fetch ran out of, if that is why it failed.
    pub fn exhausted(&self) -> Option<crate::limits::Exhausted> {
        let path = match self {
            FetchError::Io { path, .. } | FetchError::Unpack { path, .. } => path.clone(),
            _ => return None,
        };
        crate::limits::exhausted(self, Some(path))
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io { what, path, source }
}

/// Fetches `req.uri` into `req.dest` unless it is there already, and returns
/// `req.dest`. Blocks for as long as the download takes, and while another
/// fetcher of the same `dest` holds its lock.
pub fn fetch(req: &FetchRequest, progress: &mut dyn FnMut(&Progress)) -> Result<PathBuf, FetchError> {
    let done = |progress: &mut dyn FnMut(&Progress)| {
        progress(&Progress::Done { path: req.dest.clone() });
        Ok(req.dest.clone())
    };
    if req.dest.exists() {
        return done(progress);
    }
    req.check()?;
    let source = Source::parse(&req.uri)?;
    if let Some(parent) = req.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent).map_err(io_error("creating image directory", parent))?;
    }
    let _lock = lock(&sibling(&req.dest, ".lock"))?;
    // Whoever held the lock before us may have fetched it.
    if req.dest.exists() {
        return done(progress);
    }

    let part = sibling(&req.dest, ".part");
    download(&req.uri, &source, &part, progress)?;
    if let Some(checksum) = &req.checksum {
        progress(&Progress::Verifying);
        if let Err(e) = verify(&req.uri, &part, checksum) {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    }
    let unpacked = unpack(&req.uri, &part, &req.dest, progress);
    // Bytes that failed to unpack would only fail again.
    let _ = fs::remove_file(&part);
    unpacked?;
    done(progress)
}

/// Where the bytes come from.
enum Source {
    Http,
    File(PathBuf),
}

impl Source {
    fn parse(uri: &str) -> Result<Source, FetchError> {
        let unsupported = || FetchError::UnsupportedUri { uri: uri.to_string() };
        let (scheme, rest) = uri.split_once("://").ok_or_else(unsupported)?;
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" if !rest.is_empty() => Ok(Source::Http),
            "file" => {
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                let path = percent_decode(path).ok_or_else(unsupported)?;
                if !path.starts_with("/") {
                    return Err(unsupported());
                }
                Ok(Source::File(path))
            }
            _ => Err(unsupported()),
        }
    }
}

fn percent_decode(text: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(OsString::from_vec(out).into())
}

/// The last segment of the URI's path, without query or fragment.
fn file_name(uri: &str) -> &str {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    path.rsplit('/').next().unwrap_or(path)
}

fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = dest.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Like `fs::create_dir_all`, with every directory it makes mode 0755.
fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn open_shared_file(path: &Path, truncate: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// A fetch's lock: `<dest>.lock`, held with flock for the whole fetch and
/// removed when the fetch ends, however it ends, so no lock file is left in
/// the cache.
struct FetchLock {
    path: PathBuf,
    _held: Flock<File>,
}

impl Drop for FetchLock {
    fn drop(&mut self) {
        // Removed while still held: a fetcher waiting on this file then
        // finds it is no longer the lock's (see lock) and takes a new one.
        let _ = fs::remove_file(&self.path);
    }
}

fn lock(path: &Path) -> Result<FetchLock, FetchError> {
    loop {
        let mut file = open_shared_file(path, false).map_err(io_error("opening lock file", path))?;
        let held = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(held) => break held,
                Err((again, Errno::EINTR)) => file = again,
                Err((_, errno)) => return Err(io_error("locking", path)(errno.into())),
            }
        };
        // The file locked must still be the one at the path: its holder
        // removes it when done, and another fetcher may have made a new one.
        let current = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let locked = held.metadata().ok().map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == locked {
            return Ok(FetchLock {
                path: path.to_path_buf(),
                _held: held,
            });
        }
    }
}

/// A body to copy into `.part`, starting at byte `start` of the file.
struct Opened {
    body: Box<dyn Read>,
    start: u64,
    /// Of the whole file.
    total: Option<u64>,
}

fn download(uri: &str, source: &Source, part: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<(), FetchError> {
    let resume_from = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let opened = match source {
        Source::Http => open_http(uri, resume_from)?,
        Source::File(path) => open_file(path, resume_from)?,
    };
    let Opened { mut body, start, total } = opened;
    progress(&Progress::Started {
        total,
        resumed_from: start,
    });

    let mut file = open_shared_file(part, false).map_err(io_error("opening", part))?;
    file.set_len(start)
        .and_then(|()| file.seek(SeekFrom::Start(start)))
        .map_err(io_error("preparing", part))?;
    let interrupted = |done: u64, why: String| FetchError::Interrupted {
        uri: uri.to_string(),
        done,
        total,
        part: part.to_path_buf(),
        why,
    };
    let mut done = start;
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.sync_data();
                return Err(interrupted(done, e.to_string()));
            }
        };
        file.write_all(&buffer[..n]).map_err(io_error("writing", part))?;
        done += n as u64;
        progress(&Progress::Bytes { done, total });
    }
    file.sync_all().map_err(io_error("writing", part))?;
    match total {
        Some(total) if done < total => Err(interrupted(done, "connection closed".to_string())),
        _ => Ok(()),
    }
}

fn open_http(uri: &str, resume_from: u64) -> Result<Opened, FetchError> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .user_agent(concat!("evum/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let request_error = |e: ureq::Error| FetchError::Request {
        uri: uri.to_string(),
        why: e.to_string(),
    };
    let mut request = agent.get(uri);
    if resume_from > 0 {
        request = request.header("Range", format!("bytes={resume_from}-"));
    }
    let response = request.call().map_err(request_error)?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let opened = |start, total, response: ureq::http::Response<ureq::Body>| Opened {
        body: Box::new(response.into_body().into_reader()),
        start,
        total,
    };
    match status {
        200 => Ok(opened(0, length, response)),
        206 if resume_from > 0 => match header("content-range").and_then(parse_content_range) {
            Some((first, total)) if first == resume_from => {
                let total = total.or(length.map(|l| l + first));
                Ok(opened(first, total, response))
            }
            // Not the bytes we asked for: start over.
            _ => open_http(uri, 0),
        },
        // The .part is as long as the file, or longer: start over.
        416 if resume_from > 0 => open_http(uri, 0),
        _ => Err(FetchError::Status {
            uri: uri.to_string(),
            status,
        }),
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) as `(FIRST, TOTAL)`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = range.split_once('/')?;
    let (first, _last) = span.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

fn open_file(path: &Path, resume_from: u64) -> Result<Opened, FetchError> {
    let mut file = File::open(path).map_err(io_error("opening", path))?;
    let meta = file.metadata().map_err(io_error("reading", path))?;
    shareable(path, &meta)?;
    let total = meta.len();
    let start = if resume_from <= total { resume_from } else { 0 };
    file.seek(SeekFrom::Start(start)).map_err(io_error("reading", path))?;
    Ok(Opened {
        body: Box::new(file),
        start,
        total: Some(total),
    })
}

/// A `file://` source must be a regular file every user may read: the
/// cache makes images readable by all (the VMs' users read them), so a
/// file of narrower mode would be copied out of its owner's reach. evum run
/// as root reads any file, which is why the mode, not the open, decides.
fn shareable(path: &Path, meta: &std::fs::Metadata) -> Result<(), FetchError> {
    let refuse = |why| {
        Err(FetchError::UnsharedSource {
            path: path.to_path_buf(),
            why,
        })
    };
    if !meta.is_file() {
        return refuse("not a regular file");
    }
    if meta.permissions().mode() & 0o004 == 0 {
        return refuse("not readable by every user (mode o+r), as the cached image would be");
    }
    Ok(())
}

fn verify(uri: &str, part: &Path, checksum: &Checksum) -> Result<(), FetchError> {
    let mut file = File::open(part).map_err(io_error("opening", part))?;
    let mut hasher = checksum.hasher();
    let mut buffer = vec![0; BUFFER_SIZE];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("reading", part)(e)),
        }
    }
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let expected = checksum.hex().to_ascii_lowercase();
    if got == expected {
        Ok(())
    } else {
        Err(FetchError::ChecksumMismatch {
            uri: uri.to_string(),
            algorithm: checksum.algorithm(),
            expected,
            got,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// One file, maybe compressed.
    File(Compression),
    /// A tar archive, maybe compressed, unpacked into a directory.
    Tar(Compression),
}

impl Format {
    fn of(uri: &str) -> Format {
        let name = file_name(uri).to_ascii_lowercase();
        let ends = |suffixes: &[&str]| suffixes.iter().any(|s| name.ends_with(s));
        if ends(&[".tar.gz", ".tgz"]) {
            Format::Tar(Compression::Gzip)
        } else if ends(&[".tar.bz2", ".tbz2", ".tbz"]) {
            Format::Tar(Compression::Bzip2)
        } else if ends(&[".tar.xz", ".txz"]) {
            Format::Tar(Compression::Xz)
        } else if ends(&[".tar"]) {
            Format::Tar(Compression::None)
        } else if ends(&[".gz"]) {
            Format::File(Compression::Gzip)
        } else if ends(&[".bz2"]) {
            Format::File(Compression::Bzip2)
        } else if ends(&[".xz"]) {
            Format::File(Compression::Xz)
        } else {
            Format::File(Compression::None)
        }
    }
}

fn decoder(compression: Compression, file: File) -> Box<dyn Read> {
    let file = BufReader::with_capacity(BUFFER_SIZE, file);
    match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(file)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(file)),
    }
}

/// Turns the verified `.part` into `dest`, by way of `<dest>.unpack` unless
/// it is to be kept as it is.
fn unpack(uri: &str, part: &Path, dest: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<(), FetchError> {
    let format = Format::of(uri);
    if format == Format::File(Compression::None) {
        return fs::rename(part, dest).map_err(io_error("renaming into place", part));
    }
    progress(&Progress::Unpacking);
    let staging = sibling(dest, ".unpack");
    remove_any(&staging).map_err(io_error("removing stale", &staging))?;
    let input = File::open(part).map_err(io_error("opening", part))?;
    let unpacked = match format {
        Format::File(compression) => decompress(uri, decoder(compression, input), &staging),
        Format::Tar(compression) => untar(uri, decoder(compression, input), &staging),
    }
    .and_then(|()| fs::rename(&staging, dest).map_err(io_error("renaming into place", &staging)));
    if unpacked.is_err() {
        let _ = remove_any(&staging);
    }
    unpacked
}

fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn decompress(uri: &str, mut input: Box<dyn Read>, staging: &Path) -> Result<(), FetchError> {
    let unpack_error = |source| FetchError::Unpack {
        uri: uri.to_string(),
        path: staging.to_path_buf(),
        source,
    };
    let mut output = open_shared_file(staging, true).map_err(io_error("creating", staging))?;
    io::copy(&mut input, &mut output).map_err(unpack_error)?;
    output.sync_all().map_err(io_error("writing", staging))
}

/// Unpacks a tar archive into the new directory `staging`. Entries that
/// would land outside it (absolute, or through `..`) fail the whole image
/// rather than being skipped; device nodes and fifos, which only root could
/// make, are skipped.
fn untar(uri: &str, input: Box<dyn Read>, staging: &Path) -> Result<(), FetchError> {
    let unpack_error = |source| FetchError::Unpack {
        uri: uri.to_string(),
        path: staging.to_path_buf(),
        source,
    };
    create_dirs(staging).map_err(io_error("creating", staging))?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(unpack_error)? {
        let mut entry = entry.map_err(unpack_error)?;
        let path = entry.path().map_err(unpack_error)?.into_owned();
        let escapes = path
            .components()
            .any(|c| matches!(c, Component::RootDir | Component::ParentDir | Component::Prefix(_)));
        if escapes {
            return Err(FetchError::UnsafeEntry {
                uri: uri.to_string(),
                entry: path.display().to_string(),
                dir: staging.to_path_buf(),
            });
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        entry.unpack_in(staging).map_err(unpack_error)?;
    }
    // The archive may have listed the top directory itself with another mode.
    fs::set_permissions(staging, Permissions::from_mode(DIR_MODE)).map_err(io_error("creating", staging))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_file_name() {
        let of = |uri| Format::of(uri);
        assert_eq!(of("http://h/a/root.tar.gz?x=1"), Format::Tar(Compression::Gzip));
        assert_eq!(of("http://h/root.TGZ"), Format::Tar(Compression::Gzip));
        assert_eq!(of("http://h/root.tar.xz"), Format::Tar(Compression::Xz));
        assert_eq!(of("http://h/root.tar.bz2#frag"), Format::Tar(Compression::Bzip2));
        assert_eq!(of("file:///x/root.tar"), Format::Tar(Compression::None));
        assert_eq!(of("http://h/disk.img.gz"), Format::File(Compression::Gzip));
        assert_eq!(of("http://h/disk.img.bz2"), Format::File(Compression::Bzip2));
        assert_eq!(of("http://h/disk.img.xz"), Format::File(Compression::Xz));
        assert_eq!(of("http://h/disk.img"), Format::File(Compression::None));
        assert_eq!(of("http://h.gz"), Format::File(Compression::Gzip));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn file_uris() {
        assert!(matches!(Source::parse("file:///a%20b/c"), Ok(Source::File(p)) if p == Path::new("/a b/c")));
        assert!(matches!(Source::parse("file://localhost/a"), Ok(Source::File(p)) if p == Path::new("/a")));
        assert!(Source::parse("file://relative/a").is_err());
        assert!(Source::parse("ftp://h/a").is_err());
        assert!(Source::parse("/just/a/path").is_err());
        assert!(Source::parse("http://").is_err());
    }

    #[test]
    fn checksums_are_checked_for_shape() {
        assert!(Checksum::Md5("D41D8CD98F00B204E9800998ECF8427E".into()).is_well_formed());
        assert!(!Checksum::Md5("d41d8cd98f00b204e9800998ecf8427".into()).is_well_formed());
        assert!(!Checksum::Sha256("zz".repeat(32)).is_well_formed());
    }
}
