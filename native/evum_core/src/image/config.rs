//! evum's configuration: named networks and images (dists).
//!
//! Layers, each overriding the ones before it entry by entry (a network or
//! an image is replaced whole): the defaults shipped in `priv/evm.toml`, the
//! original evum's `priv/evm.cfg` when a user has one (Erlang terms, read by
//! the BEAM and handed over as a [`toml::Value`]), then a user's own toml
//! file. Every layer goes through the same checks, and an error names the
//! file, the key and what was expected there.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Image names evum itself provides; a file may not redefine them.
pub const BUILTIN_IMAGES: [&str; 2] = ["busybox", "host"];

/// Kernel arguments that are evum's to set: an image's `args` may not.
const RESERVED_ARGS: [&str; 9] = ["con", "ssl", "ubd", "eth", "vec", "umid", "uml_dir", "hostfs", "initrd"];

/// The largest image evum builds (`size`), in bytes: 1024G. mke2fs makes
/// a sparse file, but its metadata (the journal, for one) grows with the
/// size, and a size past this is more likely a slip than a wish.
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;
/// The smallest: 1M, about the least ext4 with a journal takes.
pub const MIN_IMAGE_BYTES: u64 = 1 << 20;

/// The longest file name a file system call takes, in bytes (PATH_MAX,
/// 4096, counts the terminating NUL).
pub const PATH_MAX: usize = 4095;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: {key}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key, e.g. `network.home.first_ip`;
    /// empty when the file as a whole is wrong (unreadable, bad syntax).
    pub key: String,
    pub message: String,
}

/// The merged configuration.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Config {
    pub networks: BTreeMap<String, Network>,
    pub images: BTreeMap<String, Image>,
}

/// A named network, as the original evm.cfg described one: VMs get
/// `base_ip` followed by `first_ip`, `first_ip + 1`, ...
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The first three octets with the trailing dot: "192.168.213.".
    pub base_ip: String,
    pub first_ip: u8,
    pub netmask: Ipv4Addr,
    pub gw: Ipv4Addr,
    /// An address guests can ping to check the network (evum:ping/2).
    pub ping: Option<Ipv4Addr>,
    /// evum's gateway on the network's switch, at `gw`: DHCP, DNS at
    /// `base_ip` 3, NAT to the outside through host sockets, port forwards.
    #[serde(default)]
    pub gateway: bool,
    /// Whether guests reach the host's 127.0.0.1 at `gw` (gateway only).
    #[serde(default)]
    pub host_loopback: bool,
}

/// Addresses handed out by evm:create on a network, from `first_ip` on; a
/// gateway's DHCP serves the 16 after them.
pub const STATIC_ADDRESSES: u8 = 64;

/// A guest system to boot, and where its root filesystem comes from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// A filesystem image (ext2/3/4): a name in the cache directory, or an
    /// absolute path. With `uri`, the name the download is kept under.
    pub file: Option<String>,
    /// Where to download `file` from (http, https or file).
    pub uri: Option<String>,
    pub sha256: Option<String>,
    /// For old entries, as the original evm.cfg had them.
    pub md5: Option<String>,
    /// A host directory that is the guest's root, read-only over hostfs.
    pub dir: Option<PathBuf>,
    /// A host directory an ext4 image is built from (mke2fs -d).
    pub from_dir: Option<PathBuf>,
    /// A Debian system built with debootstrap into an ext4 image.
    pub debootstrap: Option<Debootstrap>,
    /// Size of a built image, as mke2fs takes it ("2G").
    pub size: Option<String>,
    /// Extra kernel arguments ("name=value").
    #[serde(default)]
    pub args: Vec<String>,
    /// Whether the image expects a network interface (the original's
    /// `{net, true}`); informational.
    #[serde(default)]
    pub net: bool,
    /// What the console runs in the guest instead of a login shell.
    pub init: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debootstrap {
    pub suite: String,
    /// The Debian mirror; the host's own apt source when absent.
    pub mirror: Option<String>,
    #[serde(default)]
    pub include: Vec<String>,
}

/// Where an image's root filesystem comes from, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    File(&'a str),
    Download {
        file: String,
        uri: &'a str,
        checksum: Option<Checksum>,
    },
    Dir(&'a Path),
    FromDir(&'a Path),
    Debootstrap(&'a Debootstrap),
}

impl Eq for Debootstrap {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    Md5(String),
}

/// One file's worth of configuration, before merging.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    #[serde(default)]
    network: BTreeMap<String, Network>,
    #[serde(default)]
    image: BTreeMap<String, Image>,
}

impl Config {
    /// Adds a toml file's entries over the ones already here.
    pub fn merge_toml(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let layer = serde_path_to_error::deserialize(deserializer).map_err(|e| path_error(file, e))?;
        self.merge(file, layer)
    }

    /// Reads and adds a toml file.
    pub fn merge_toml_file(&mut self, file: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.into(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        self.merge_toml(file, &text)
    }

    /// Adds entries given as a value (the original evm.cfg, converted).
    pub fn merge_value(&mut self, file: &Path, value: toml::Value) -> Result<(), ConfigError> {
        let layer = serde_path_to_error::deserialize(value).map_err(|e| path_error(file, e))?;
        self.merge(file, layer)
    }

    fn merge(&mut self, file: &Path, layer: Layer) -> Result<(), ConfigError> {
        for (name, network) in &layer.network {
            check_network(network).map_err(|(key, message)| ConfigError {
                file: file.into(),
                key: format!("network.{name}.{key}"),
                message,
            })?;
        }
        for (name, image) in &layer.image {
            let at = |key: &str, message: String| ConfigError {
                file: file.into(),
                key: if key.is_empty() {
                    format!("image.{name}")
                } else {
                    format!("image.{name}.{key}")
                },
                message,
            };
            if BUILTIN_IMAGES.contains(&name.as_str()) {
                return Err(at("", format!("{name} is built into evum and cannot be redefined")));
            }
            image.source().map_err(|(key, message)| at(key, message))?;
        }
        self.networks.extend(layer.network);
        self.images.extend(layer.image);
        Ok(())
    }
}

fn path_error<E: std::fmt::Display>(file: &Path, e: serde_path_to_error::Error<E>) -> ConfigError {
    let key = e.path().to_string();
    ConfigError {
        file: file.into(),
        // serde_path_to_error says "." for the top level.
        key: if key == "." { String::new() } else { key },
        // Some deserializers add "in `key`" themselves: the key is said once.
        message: e
            .inner()
            .to_string()
            .split("\nin `")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

type Problem = (&'static str, String);

fn check_network(network: &Network) -> Result<(), Problem> {
    let octets: Vec<&str> = network.base_ip.split('.').collect();
    let well_formed = octets.len() == 4 && octets[3].is_empty() && octets[..3].iter().all(|o| o.parse::<u8>().is_ok());
    if !well_formed {
        let expected = "three octets and a dot, like \"192.168.213.\"";
        return Err(("base_ip", format!("expected {expected}, got {:?}", network.base_ip)));
    }
    if network.first_ip == 0 || network.first_ip == 255 {
        return Err(("first_ip", format!("expected 1 to 254, got {}", network.first_ip)));
    }
    if network.gateway {
        // The gateway's own addresses (gw, DNS at .3) stay below the guests',
        // and its DHCP range (16 addresses) fits above them.
        let last = u16::from(network.first_ip) + u16::from(STATIC_ADDRESSES) + 16;
        if network.first_ip <= 3 || last > 255 {
            let expected = format!("4 to {} on a network with a gateway", 255 - STATIC_ADDRESSES - 16);
            return Err(("first_ip", format!("expected {expected}, got {}", network.first_ip)));
        }
        let base: Ipv4Addr = format!("{}0", network.base_ip)
            .parse()
            .map_err(|_| ("base_ip", "not an address".into()))?;
        let mask = u32::from(network.netmask);
        // Contiguous, and /8 at least: 0.0.0.0 is contiguous too, and
        // would take every gw for one of the network's.
        let prefix = mask.leading_ones();
        if prefix + mask.trailing_zeros() != 32 || !(8..=30).contains(&prefix) {
            return Err((
                "netmask",
                format!("expected a netmask of /8 to /30, got {}", network.netmask),
            ));
        }
        if u32::from(network.gw) & mask != u32::from(base) & mask {
            return Err((
                "gw",
                format!("expected an address in the network of base_ip, got {}", network.gw),
            ));
        }
    } else if network.host_loopback {
        return Err(("host_loopback", "only a network with a gateway reaches the host".into()));
    }
    Ok(())
}

impl Image {
    /// Where the root filesystem comes from; `Err((key, what))` when the
    /// entry names none, or more than one, or a bad checksum or argument.
    pub fn source(&self) -> Result<Source<'_>, Problem> {
        // Every parameter of every arg: one arg may hold several.
        for arg in self
            .args
            .iter()
            .flat_map(|a| a.split(|c: char| c.is_whitespace() || c == '\u{a0}'))
        {
            let name = arg.split('=').next().unwrap_or_default();
            if reserved_arg(name) {
                return Err(("args", format!("{name} is set by evum and cannot be given in args")));
            }
        }
        let checksum = self.checksum()?;
        let given = [
            self.file.is_some() || self.uri.is_some(),
            self.dir.is_some(),
            self.from_dir.is_some(),
            self.debootstrap.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err((
                "",
                "expected exactly one of file (with or without uri), dir, from_dir, debootstrap".into(),
            ));
        }
        if checksum.is_some() && self.uri.is_none() {
            return Err(("uri", "a checksum is given but no uri to download from".into()));
        }
        let built = self.from_dir.is_some() || self.debootstrap.is_some();
        if self.size.is_some() && !built {
            return Err((
                "size",
                "only images evum builds (from_dir, debootstrap) have a size".into(),
            ));
        }
        if let Some(size) = &self.size {
            check_size(size)?;
        }
        self.check_paths()?;
        Ok(
            match (&self.file, &self.uri, &self.dir, &self.from_dir, &self.debootstrap) {
                (file, Some(uri), ..) => {
                    let file = match file {
                        Some(file) => file.clone(),
                        None => file_name_of(uri).ok_or(("uri", format!("{uri} names no file")))?,
                    };
                    Source::Download { file, uri, checksum }
                }
                (Some(file), None, ..) => Source::File(file),
                (_, _, Some(dir), ..) => Source::Dir(dir),
                (_, _, _, Some(dir), _) => Source::FromDir(dir),
                (_, _, _, _, Some(debootstrap)) => Source::Debootstrap(debootstrap),
                _ => unreachable!("exactly one source was checked above"),
            },
        )
    }

    /// Every file name the entry gives reaches a file system call, and
    /// `file` (the base image) a UML disk spec too, `COW,BASE`, where `,`
    /// and `:` separate the files: a base image's name with either would
    /// be cut there.
    fn check_paths(&self) -> Result<(), Problem> {
        if let Some(file) = &self.file {
            check_path("file", file.as_bytes())?;
            if file.contains([',', ':']) {
                return Err((
                    "file",
                    format!("{file:?} has a ',' or ':', which separate the files of a UML disk"),
                ));
            }
        }
        for (key, dir) in [("dir", &self.dir), ("from_dir", &self.from_dir)] {
            if let Some(dir) = dir {
                check_path(key, dir.as_os_str().as_encoded_bytes())?;
            }
        }
        Ok(())
    }

    fn checksum(&self) -> Result<Option<Checksum>, Problem> {
        let hex = |key: &'static str, value: &str, len: usize| {
            if value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(value.to_ascii_lowercase())
            } else {
                Err((key, format!("expected {len} hex digits, got {value:?}")))
            }
        };
        match (&self.sha256, &self.md5) {
            (Some(_), Some(_)) => Err(("md5", "give sha256 or md5, not both".into())),
            (Some(sum), None) => Ok(Some(Checksum::Sha256(hex("sha256", sum, 64)?))),
            (None, Some(sum)) => Ok(Some(Checksum::Md5(hex("md5", sum, 32)?))),
            (None, None) => Ok(None),
        }
    }
}

/// A built image's size, as mke2fs takes it: digits and one unit letter
/// at most (none is KiB to mke2fs), from [`MIN_IMAGE_BYTES`] to
/// [`MAX_IMAGE_BYTES`].
fn check_size(size: &str) -> Result<(), Problem> {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
    if digits.is_empty() || digits.len() + 1 < size.len() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(("size", format!("expected a size like \"2G\", got {size:?}")));
    }
    let shift = match size[digits.len()..].to_ascii_uppercase().as_str() {
        "M" => 20,
        "G" => 30,
        _ => 10,
    };
    let bytes = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << shift));
    match bytes {
        Some(bytes) if (MIN_IMAGE_BYTES..=MAX_IMAGE_BYTES).contains(&bytes) => Ok(()),
        _ => Err(("size", format!("expected a size from 1M to 1024G, got {size:?}"))),
    }
}

/// A file name a file system call takes: not empty, no NUL, at most
/// [`PATH_MAX`] bytes.
fn check_path(key: &'static str, path: &[u8]) -> Result<(), Problem> {
    if path.is_empty() || path.contains(&0) || path.len() > PATH_MAX {
        return Err((
            key,
            format!("expected a file name of 1 to {PATH_MAX} bytes without NUL"),
        ));
    }
    Ok(())
}

/// Whether the kernel may take a parameter named `name` for one of
/// [`RESERVED_ARGS`]: UML matches their names as prefixes and reads the
/// device after them in any base (`con0x1`, `eth00`), with flags or as a
/// letter (`ubd1r`, `ubdb`), or up to a colon (`vec+0:transport`). A name
/// that goes on with a letter is another parameter (`console`), but for a
/// disk.
fn reserved_arg(name: &str) -> bool {
    RESERVED_ARGS.iter().any(|reserved| {
        name.strip_prefix(reserved)
            .is_some_and(|rest| match rest.chars().next() {
                None => true,
                Some(c) => !c.is_ascii_alphabetic() || (*reserved == "ubd" && c.is_ascii_lowercase()),
            })
    })
}

/// The last path segment of a URI, without a query.
fn file_name_of(uri: &str) -> Option<String> {
    let path = uri.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && !path.ends_with("://")).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.merge_toml(Path::new("/etc/evm.toml"), text)?;
        Ok(config)
    }

    fn error(text: &str) -> (String, String) {
        let e = load(text).unwrap_err();
        assert_eq!(e.file, Path::new("/etc/evm.toml"));
        (e.key, e.message)
    }

    const HOME: &str = r#"
        [network.home]
        base_ip = "192.168.213."
        first_ip = 92
        netmask = "255.255.255.0"
        gw = "192.168.213.1"
    "#;

    #[test]
    fn networks_read_as_the_original_wrote_them() {
        let config = load(HOME).unwrap();
        let home = &config.networks["home"];
        assert_eq!(home.base_ip, "192.168.213.");
        assert_eq!(home.first_ip, 92);
        assert_eq!(home.gw, Ipv4Addr::new(192, 168, 213, 1));
        assert_eq!(home.ping, None);
    }

    #[test]
    fn errors_name_the_key_and_what_was_expected() {
        let (key, message) = error(&HOME.replace("= 92", "= \"92\""));
        assert_eq!(key, "network.home.first_ip");
        assert!(message.contains("expected u8"), "{message}");

        let (key, message) = error(&HOME.replace("255.255.255.0", "255.255.255"));
        assert_eq!(key, "network.home.netmask");
        assert!(message.contains("IPv4"), "{message}");

        let (key, message) = error(&HOME.replace("192.168.213.\"", "192.168.213\""));
        assert_eq!(key, "network.home.base_ip");
        assert!(message.contains("three octets"), "{message}");

        let (key, message) = error(&format!("{HOME}\nbase = 1"));
        assert_eq!(key, "network.home.base");
        assert!(message.contains("unknown field `base`"), "{message}");

        let (key, message) = error("[networks.home]");
        assert_eq!(key, "networks");
        assert!(message.contains("unknown field `networks`"), "{message}");

        let (_, message) = error("[network.home");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn gateway_networks_keep_their_addresses_apart() {
        let user = "[network.user]\nbase_ip = \"10.0.2.\"\nfirst_ip = 15\nnetmask = \"255.255.255.0\"\ngw = \"10.0.2.2\"\ngateway = true";
        let config = load(user).unwrap();
        assert!(config.networks["user"].gateway);
        assert!(!config.networks["user"].host_loopback);
        assert_eq!(error(&user.replace("= 15", "= 3")).0, "network.user.first_ip");
        assert_eq!(error(&user.replace("= 15", "= 200")).0, "network.user.first_ip");
        assert_eq!(error(&user.replace("10.0.2.2\"", "10.0.3.2\"")).0, "network.user.gw");
        for netmask in ["255.0.255.0", "0.0.0.0", "254.0.0.0", "255.255.255.254"] {
            assert_eq!(
                error(&user.replace("255.255.255.0", netmask)).0,
                "network.user.netmask",
                "{netmask}"
            );
        }
        let (key, message) = error(&HOME.replace("gw =", "host_loopback = true\ngw ="));
        assert_eq!(key, "network.home.host_loopback");
        assert!(message.contains("gateway"), "{message}");
    }

    #[test]
    fn later_files_replace_whole_entries() {
        let mut config = load(HOME).unwrap();
        let user = "[network.home]\nbase_ip = \"10.1.2.\"\nfirst_ip = 5\nnetmask = \"255.0.0.0\"\ngw = \"10.0.0.1\"";
        config.merge_toml(Path::new("user.toml"), user).unwrap();
        assert_eq!(config.networks["home"].base_ip, "10.1.2.");
        assert_eq!(config.networks["home"].first_ip, 5);
    }

    #[test]
    fn image_sources() {
        let config = load(
            r#"
            [image.openwrt]
            file = "openwrt-x86-ext2.fs"
            uri = "http://example.org/openwrt-x86-ext2.fs"
            md5 = "56D54230D71C6886428651BEE25CFC0A"
            args = ["init=/etc/preinit"]
            net = true
            [image.tarball]
            uri = "http://example.org/path/root.tar.xz?x=1"
            [image.disk]
            file = "/srv/disk.ext4"
            [image.tree]
            dir = "/srv/tree"
            [image.built]
            from_dir = "/srv/tree"
            size = "512M"
            [image.debian]
            debootstrap = { suite = "bookworm" }
            "#,
        )
        .unwrap();
        let source = |name: &str| config.images[name].source().unwrap();
        assert_eq!(
            source("openwrt"),
            Source::Download {
                file: "openwrt-x86-ext2.fs".into(),
                uri: "http://example.org/openwrt-x86-ext2.fs",
                checksum: Some(Checksum::Md5("56d54230d71c6886428651bee25cfc0a".into())),
            }
        );
        assert!(matches!(source("tarball"), Source::Download { file, checksum: None, .. } if file == "root.tar.xz"));
        assert_eq!(source("disk"), Source::File("/srv/disk.ext4"));
        assert_eq!(source("tree"), Source::Dir(Path::new("/srv/tree")));
        assert_eq!(source("built"), Source::FromDir(Path::new("/srv/tree")));
        assert!(matches!(source("debian"), Source::Debootstrap(d) if d.suite == "bookworm" && d.mirror.is_none()));
    }

    #[test]
    fn bad_images_are_named() {
        let cases = [
            ("[image.x]\nfile = \"a\"\ndir = \"/b\"", "image.x", "exactly one of"),
            ("[image.x]", "image.x", "exactly one of"),
            (
                "[image.x]\nuri = \"http://h/a\"\nsha256 = \"abc\"",
                "image.x.sha256",
                "64 hex digits",
            ),
            (
                "[image.x]\nfile = \"a\"\nmd5 = \"56d54230d71c6886428651bee25cfc0a\"",
                "image.x.uri",
                "no uri",
            ),
            (
                "[image.x]\nfile = \"a\"\nargs = [\"ssl0=fd:0,fd:1\"]",
                "image.x.args",
                "ssl0 is set by evum",
            ),
            (
                "[image.x]\nfile = \"a\"\nargs = [\"panic=0 ubd1=/etc/shadow\"]",
                "image.x.args",
                "ubd1 is set by evum",
            ),
            // As the kernel reads them: a disk with flags, a line in hex, a
            // vector device.
            (
                "[image.x]\nfile = \"a\"\nargs = [\"ubd1r=/etc/shadow\"]",
                "image.x.args",
                "ubd1r is set by evum",
            ),
            (
                "[image.x]\nfile = \"a\"\nargs = [\"con0x0=fd:0,fd:1\"]",
                "image.x.args",
                "con0x0 is set by evum",
            ),
            (
                "[image.x]\nfile = \"a\"\nargs = [\"vec0:transport=tap,ifname=t0\"]",
                "image.x.args",
                "vec0:transport is set by evum",
            ),
            (
                "[image.x]\nfrom_dir = \"/a\"\nsize = \"lots\"",
                "image.x.size",
                "a size like",
            ),
            (
                "[image.x]\nfile = \"a\"\nsize = \"1G\"",
                "image.x.size",
                "only images evum builds",
            ),
            (
                "[image.x]\nfrom_dir = \"/a\"\nsize = \"0G\"",
                "image.x.size",
                "from 1M to 1024G",
            ),
            (
                "[image.x]\nfrom_dir = \"/a\"\nsize = \"1025G\"",
                "image.x.size",
                "from 1M to 1024G",
            ),
            (
                "[image.x]\nfrom_dir = \"/a\"\nsize = \"99999999999999999999G\"",
                "image.x.size",
                "from 1M to 1024G",
            ),
            (
                "[image.x]\nfile = \"/srv/a,b.ext4\"",
                "image.x.file",
                "separate the files",
            ),
            (
                "[image.x]\nfile = \"/srv/a:b.ext4\"",
                "image.x.file",
                "separate the files",
            ),
            ("[image.x]\nfile = \"/srv/a\\u0000b\"", "image.x.file", "without NUL"),
            ("[image.x]\nfile = \"\"", "image.x.file", "without NUL"),
            ("[image.x]\ndir = \"/a\\u0000b\"", "image.x.dir", "without NUL"),
            ("[image.busybox]\nfile = \"a\"", "image.busybox", "built into evum"),
            ("[image.x]\nfile = 3", "image.x.file", "expected a string"),
            (
                "[image.x]\ndebootstrap = { suite = \"bookworm\", mirrors = \"m\" }",
                "image.x.debootstrap.mirrors",
                "unknown field",
            ),
        ];
        for (text, want_key, want_message) in cases {
            let (key, message) = error(text);
            assert_eq!(key, want_key, "{text}");
            assert!(message.contains(want_message), "{text}: {message}");
        }
    }

    #[test]
    fn image_sizes_and_paths_within_bounds_pass() {
        let long = format!("/{}", "x".repeat(PATH_MAX - 1));
        let config = load(&format!(
            "[image.a]\nfrom_dir = \"/a\"\nsize = \"1024G\"\n[image.b]\nfrom_dir = \"/a\"\nsize = \"1M\"\n\
             [image.c]\nfile = \"{long}\"\n"
        ))
        .unwrap();
        for name in ["a", "b", "c"] {
            assert!(config.images[name].source().is_ok(), "{name}");
        }
        let (key, message) = error(&format!("[image.c]\nfile = \"{long}x\"\n"));
        assert_eq!((key.as_str(), message.contains("without NUL")), ("image.c.file", true));
    }

    #[test]
    fn values_from_the_original_cfg_go_through_the_same_checks() {
        let value: toml::Value = toml::from_str(HOME).unwrap();
        let mut config = Config::default();
        config.merge_value(Path::new("/x/evm.cfg"), value).unwrap();
        assert_eq!(config.networks["home"].first_ip, 92);

        let bad: toml::Value = toml::from_str(&HOME.replace("= 92", "= 300")).unwrap();
        let e = config.merge_value(Path::new("/x/evm.cfg"), bad).unwrap_err();
        assert_eq!(
            (e.file.as_path(), e.key.as_str()),
            (Path::new("/x/evm.cfg"), "network.home.first_ip")
        );
    }
}

#[cfg(test)]
#[path = "config_props.rs"]
mod props;
