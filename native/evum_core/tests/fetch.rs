//! Image downloads against a real HTTP server on 127.0.0.1, started by each
//! test and serving bytes the test made: checksums, resume after a transfer
//! cut short, servers that ignore Range, every unpack format, unsafe tar
//! entries, progress order, and concurrent fetchers of one image.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use evum_core::image::fetch::{fetch, Checksum, FetchError, FetchRequest, Progress};
use sha2::Digest;

// ---------------------------------------------------------------- fixtures

/// A fresh directory, removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fetch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the server answers for one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Honours `Range: bytes=N-` with 206, or 416 past the end.
    Normal,
    /// Always answers 200 with the whole body.
    IgnoreRange,
    /// Honours Range, announces the full Content-Length, then closes the
    /// connection after this many body bytes.
    CutAfter(usize),
}

struct Route {
    body: Vec<u8>,
    mode: Mode,
    /// Before the body is sent, so concurrent fetchers overlap.
    delay: Duration,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r, s) = (routes.clone(), seen.clone());
        // Lives until the test process ends; every test has its own.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, s) = (r.clone(), s.clone());
                thread::spawn(move || serve(stream, &r, &s));
            }
        });
        Server { port, routes, seen }
    }

    fn serve(&self, path: &str, body: &[u8], mode: Mode) {
        self.serve_slowly(path, body, mode, Duration::ZERO);
    }

    fn serve_slowly(&self, path: &str, body: &[u8], mode: Mode, delay: Duration) {
        let route = Route {
            body: body.to_vec(),
            mode,
            delay,
        };
        self.routes.lock().unwrap().insert(path.to_string(), route);
    }

    fn uri(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

fn serve(stream: TcpStream, routes: &Mutex<HashMap<String, Route>>, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let (body, mode, delay) = match routes.lock().unwrap().get(&path) {
        Some(route) => (route.body.clone(), route.mode, route.delay),
        None => {
            respond(stream, "404 Not Found", &[], b"", None);
            return;
        }
    };
    thread::sleep(delay);
    let len = body.len();
    let first = range
        .filter(|_| mode != Mode::IgnoreRange)
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
    let cut = match mode {
        Mode::CutAfter(n) => Some(n),
        _ => None,
    };
    match first {
        Some(first) if first >= len => {
            let headers = [format!("Content-Range: bytes */{len}")];
            respond(stream, "416 Range Not Satisfiable", &headers, b"", None);
        }
        Some(first) => {
            let headers = [format!("Content-Range: bytes {first}-{}/{len}", len - 1)];
            respond(stream, "206 Partial Content", &headers, &body[first..], cut);
        }
        None => respond(stream, "200 OK", &[], &body, cut),
    }
}

fn respond(mut stream: TcpStream, status: &str, headers: &[String], body: &[u8], cut: Option<usize>) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let sent = cut.map_or(body, |n| &body[..n.min(body.len())]);
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reproducible bytes that do not compress to nothing.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

fn md5_hex(data: &[u8]) -> String {
    hex(&md5::Md5::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A tar of `(path, contents)` files; a path ending in `/` is a directory.
/// Paths are written raw into the header, so unsafe ones can be made.
fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn request(uri: String, dest: &Path, checksum: Option<Checksum>) -> FetchRequest {
    FetchRequest {
        uri,
        dest: dest.to_path_buf(),
        checksum,
    }
}

/// Fetches, returning the result and every progress event.
fn fetch_logged(req: &FetchRequest) -> (Result<PathBuf, FetchError>, Vec<Progress>) {
    let mut events = Vec::new();
    let result = fetch(req, &mut |p| events.push(p.clone()));
    (result, events)
}

fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", dest.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------- tests

#[test]
fn right_sha256_gives_the_image_and_then_the_cache() {
    let server = Server::start();
    let dir = TempDir::new("sha256");
    let data = content(300_000, 1);
    server.serve("/disk.img", &data, Mode::Normal);
    let dest = dir.join("cache/images/disk.img");
    let req = request(
        server.uri("/disk.img"),
        &dest,
        Some(Checksum::Sha256(sha256_hex(&data).to_uppercase())),
    );

    let path = fetch(&req, &mut |_| {}).expect("fetch succeeds");
    assert_eq!(path, dest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(mode(&dest), 0o644);
    assert_eq!(mode(&dir.join("cache/images")), 0o755);
    assert!(!sibling(&dest, ".part").exists());
    assert!(!sibling(&dest, ".lock").exists(), "the lock stayed behind");

    // The second fetch is the cache: no request, only Done.
    let (result, events) = fetch_logged(&req);
    assert_eq!(result.unwrap(), dest);
    assert_eq!(events, vec![Progress::Done { path: dest.clone() }]);
    assert_eq!(server.seen("/disk.img").len(), 1);
}

#[test]
fn right_md5() {
    let server = Server::start();
    let dir = TempDir::new("md5");
    let data = content(70_000, 2);
    server.serve("/disk.img", &data, Mode::Normal);
    let dest = dir.join("disk.img");
    let req = request(server.uri("/disk.img"), &dest, Some(Checksum::Md5(md5_hex(&data))));
    fetch(&req, &mut |_| {}).expect("fetch succeeds");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[test]
fn wrong_checksum_leaves_nothing() {
    let server = Server::start();
    let dir = TempDir::new("wrong");
    let data = content(50_000, 3);
    server.serve("/disk.img.gz", &gzip(&data), Mode::Normal);
    let dest = dir.join("disk.img");
    let wrong = sha256_hex(b"something else");
    let req = request(server.uri("/disk.img.gz"), &dest, Some(Checksum::Sha256(wrong.clone())));

    let err = fetch(&req, &mut |_| {}).expect_err("fetch fails");
    let message = err.to_string();
    assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err:?}");
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(&sha256_hex(&gzip(&data))), "{message}");
    assert!(message.contains("/disk.img.gz"), "{message}");
    for path in [
        dest.clone(),
        sibling(&dest, ".part"),
        sibling(&dest, ".unpack"),
        sibling(&dest, ".lock"),
    ] {
        assert!(!path.exists(), "{} exists", path.display());
    }
}

#[test]
fn malformed_checksum_is_refused_before_any_request() {
    let server = Server::start();
    let dir = TempDir::new("malformed");
    server.serve("/disk.img", b"data", Mode::Normal);
    let req = request(
        server.uri("/disk.img"),
        &dir.join("disk.img"),
        Some(Checksum::Md5("abc".into())),
    );
    let err = fetch(&req, &mut |_| {}).expect_err("fetch fails");
    assert!(matches!(err, FetchError::MalformedChecksum { .. }), "{err:?}");
    assert!(server.seen("/disk.img").is_empty());
}

#[test]
fn missing_file_is_an_http_error() {
    let server = Server::start();
    let dir = TempDir::new("404");
    let req = request(server.uri("/nothing.img"), &dir.join("nothing.img"), None);
    let err = fetch(&req, &mut |_| {}).expect_err("fetch fails");
    assert!(matches!(err, FetchError::Status { status: 404, .. }), "{err:?}");
    assert!(err.to_string().contains("/nothing.img"), "{err}");
    // A failed download leaves nothing in the cache.
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cut_transfer_keeps_the_part_and_the_next_fetch_resumes() {
    let server = Server::start();
    let dir = TempDir::new("resume");
    let data = content(200_000, 4);
    let cut = 81_234;
    server.serve("/disk.img", &data, Mode::CutAfter(cut));
    let dest = dir.join("disk.img");
    let part = sibling(&dest, ".part");
    let req = request(
        server.uri("/disk.img"),
        &dest,
        Some(Checksum::Sha256(sha256_hex(&data))),
    );

    let err = fetch(&req, &mut |_| {}).expect_err("a cut transfer fails");
    assert!(matches!(err, FetchError::Interrupted { .. }), "{err:?}");
    assert!(err.to_string().contains(".part"), "{err}");
    assert!(!dest.exists());
    assert_eq!(std::fs::read(&part).unwrap(), &data[..cut]);

    server.serve("/disk.img", &data, Mode::Normal);
    let (result, events) = fetch_logged(&req);
    assert_eq!(result.expect("the resumed fetch succeeds"), dest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!part.exists());
    let seen = server.seen("/disk.img");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(
        events[0],
        Progress::Started {
            total: Some(data.len() as u64),
            resumed_from: cut as u64
        }
    );
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let server = Server::start();
    let dir = TempDir::new("norange");
    let data = content(150_000, 5);
    let dest = dir.join("disk.img");
    // A stale .part, as if an earlier run had been cut, but wrong bytes.
    std::fs::write(sibling(&dest, ".part"), vec![0xAA; 40_000]).unwrap();
    server.serve("/disk.img", &data, Mode::IgnoreRange);
    let req = request(
        server.uri("/disk.img"),
        &dest,
        Some(Checksum::Sha256(sha256_hex(&data))),
    );

    let (result, events) = fetch_logged(&req);
    result.expect("fetch succeeds");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(server.seen("/disk.img")[0].range.as_deref(), Some("bytes=40000-"));
    assert_eq!(
        events[0],
        Progress::Started {
            total: Some(data.len() as u64),
            resumed_from: 0
        }
    );
}

#[test]
fn part_longer_than_the_file_restarts_after_416() {
    let server = Server::start();
    let dir = TempDir::new("416");
    let data = content(10_000, 6);
    let dest = dir.join("disk.img");
    std::fs::write(sibling(&dest, ".part"), vec![0; 20_000]).unwrap();
    server.serve("/disk.img", &data, Mode::Normal);
    let req = request(server.uri("/disk.img"), &dest, None);
    fetch(&req, &mut |_| {}).expect("fetch succeeds");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let ranges: Vec<_> = server.seen("/disk.img").into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, vec![Some("bytes=20000-".to_string()), None]);
}

#[test]
fn compressed_images_are_unpacked() {
    let server = Server::start();
    let dir = TempDir::new("compressed");
    let data = content(120_000, 7);
    for (name, packed) in [
        ("disk.img.gz", gzip(&data)),
        ("disk.img.bz2", bzip2(&data)),
        ("disk.img.xz", xz(&data)),
    ] {
        server.serve(&format!("/{name}"), &packed, Mode::Normal);
        let dest = dir.join(format!("{name}.img"));
        let req = request(
            server.uri(&format!("/{name}")),
            &dest,
            Some(Checksum::Sha256(sha256_hex(&packed))),
        );
        fetch(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(std::fs::read(&dest).unwrap(), data, "{name}");
        assert_eq!(mode(&dest), 0o644, "{name}");
        assert!(!sibling(&dest, ".part").exists(), "{name}");
        assert!(!sibling(&dest, ".unpack").exists(), "{name}");
    }
}

#[test]
fn tar_gz_is_unpacked_into_a_directory() {
    let server = Server::start();
    let dir = TempDir::new("targz");
    let kernel = content(30_000, 8);
    let archive = tarball(&[
        ("root/", b""),
        ("root/etc/", b""),
        ("root/etc/hostname", b"evum\n"),
        ("root/boot/vmlinux", &kernel),
    ]);
    // The query is not part of the file name the format is read from.
    server.serve("/root.tar.gz?v=1", &gzip(&archive), Mode::Normal);
    let dest = dir.join("root");
    let req = request(server.uri("/root.tar.gz?v=1"), &dest, None);

    fetch(&req, &mut |_| {}).expect("fetch succeeds");
    assert!(dest.is_dir());
    assert_eq!(mode(&dest), 0o755);
    assert_eq!(std::fs::read(dest.join("root/etc/hostname")).unwrap(), b"evum\n");
    assert_eq!(std::fs::read(dest.join("root/boot/vmlinux")).unwrap(), kernel);
    assert!(!sibling(&dest, ".unpack").exists());
}

#[test]
fn tar_entries_escaping_the_directory_are_refused() {
    let server = Server::start();
    let dir = TempDir::new("escape");
    for (n, evil) in ["../escape", "/tmp/evum-fetch-test-absolute"].into_iter().enumerate() {
        let archive = tarball(&[("ok", b"fine"), (evil, b"gotcha")]);
        let path = format!("/evil{n}.tar");
        server.serve(&path, &archive, Mode::Normal);
        let dest = dir.join(format!("images/evil{n}"));
        let req = request(server.uri(&path), &dest, None);
        let err = fetch(&req, &mut |_| {}).expect_err("fetch fails");
        assert!(matches!(err, FetchError::UnsafeEntry { .. }), "{err:?}");
        assert!(err.to_string().contains(evil), "{err}");
        assert!(!dest.exists());
        assert!(!sibling(&dest, ".unpack").exists());
        assert!(!sibling(&dest, ".part").exists());
    }
    assert!(!dir.join("images/escape").exists());
    assert!(!dir.join("escape").exists());
    assert!(!Path::new("/tmp/evum-fetch-test-absolute").exists());
}

#[test]
fn progress_arrives_in_order_and_done_names_the_path() {
    let server = Server::start();
    let dir = TempDir::new("progress");
    let data = content(500_000, 9);
    let packed = gzip(&data);
    server.serve("/disk.img.gz", &packed, Mode::Normal);
    let dest = dir.join("disk.img");
    let req = request(
        server.uri("/disk.img.gz"),
        &dest,
        Some(Checksum::Sha256(sha256_hex(&packed))),
    );

    let (result, events) = fetch_logged(&req);
    result.expect("fetch succeeds");
    let total = Some(packed.len() as u64);
    assert_eq!(events[0], Progress::Started { total, resumed_from: 0 });
    let bytes: Vec<u64> = events[1..events.len() - 3]
        .iter()
        .map(|e| match e {
            Progress::Bytes { done, total: t } if *t == total => *done,
            other => panic!("expected Bytes, got {other:?}"),
        })
        .collect();
    assert!(bytes.windows(2).all(|w| w[0] < w[1]), "{bytes:?}");
    assert_eq!(bytes.last().copied(), total);
    assert_eq!(
        events[events.len() - 3..],
        [
            Progress::Verifying,
            Progress::Unpacking,
            Progress::Done { path: dest.clone() }
        ]
    );
}

#[test]
fn file_uris_are_copied_and_unpacked() {
    let dir = TempDir::new("file");
    let data = content(40_000, 10);
    let source = dir.join("source dir/disk.img.xz");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::write(&source, xz(&data)).unwrap();
    let uri = format!("file://{}", source.display()).replace(' ', "%20");
    let dest = dir.join("disk.img");
    fetch(&request(uri, &dest, None), &mut |_| {}).expect("fetch succeeds");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[test]
fn a_file_not_every_user_may_read_is_not_copied_into_the_cache() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("unshared");
    let source = dir.join("secret.img");
    std::fs::write(&source, content(1000, 11)).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dest = dir.join("disk.img");
    let uri = format!("file://{}", source.display());
    let err = fetch(&request(uri.clone(), &dest, None), &mut |_| {}).expect_err("refused");
    assert!(matches!(err, FetchError::UnsharedSource { .. }), "{err:?}");
    assert!(!dest.exists());
    // Nor anything that is not a file, such as a directory or a device.
    for other in ["/etc", "/dev/zero"] {
        let err = fetch(&request(format!("file://{other}"), &dest, None), &mut |_| {}).expect_err(other);
        assert!(matches!(err, FetchError::UnsharedSource { .. }), "{other}: {err:?}");
    }
    assert!(!dest.exists());
}

#[test]
fn unsupported_uris_are_refused() {
    let dir = TempDir::new("unsupported");
    for uri in ["ftp://example.org/disk.img", "disk.img", "file://relative/disk.img"] {
        let err = fetch(&request(uri.into(), &dir.join("disk.img"), None), &mut |_| {}).expect_err(uri);
        assert!(matches!(err, FetchError::UnsupportedUri { .. }), "{uri}: {err:?}");
        assert!(err.to_string().contains(uri), "{err}");
    }
}

#[test]
fn concurrent_fetches_of_one_image_download_it_once() {
    let server = Server::start();
    let dir = TempDir::new("concurrent");
    let data = content(400_000, 11);
    let packed = gzip(&data);
    server.serve_slowly("/disk.img.gz", &packed, Mode::Normal, Duration::from_millis(300));
    let dest = dir.join("disk.img");
    let req = request(server.uri("/disk.img.gz"), &dest, Some(Checksum::Md5(md5_hex(&packed))));

    let fetchers: Vec<_> = (0..2)
        .map(|_| {
            let req = req.clone();
            thread::spawn(move || fetch(&req, &mut |_| {}))
        })
        .collect();
    for fetcher in fetchers {
        assert_eq!(fetcher.join().unwrap().expect("fetch succeeds"), dest);
    }
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        server.seen("/disk.img.gz").len(),
        1,
        "the second fetcher used the cache"
    );
}
