//! Property tests of the configuration reader: any text is read or refused
//! with the file named, never a panic, and what is accepted keeps the
//! documented limits: networks a gateway can serve, images with exactly
//! one source, and no kernel argument the kernel would take for one of
//! evum's devices or settings, however it is spelled.

use proptest::prelude::*;

use super::*;
use crate::testing::config;

const FILE: &str = "/etc/evm.toml";

fn load(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    config.merge_toml(Path::new(FILE), text)?;
    Ok(config)
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.into()).to_string()
}

/// `key = value` lines, each value a TOML literal or absent.
fn entry(fields: Vec<(&'static str, Option<String>)>) -> String {
    fields
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key} = {v}\n")))
        .collect()
}

/// A network: a valid one with a gateway, then up to three of its fields
/// dropped or replaced by a near miss.
fn network() -> impl Strategy<Value = String> {
    let valid = (any::<[u8; 3]>(), 4..=175u8, 8..=30u32, any::<u32>()).prop_map(|(base, first_ip, prefix, host)| {
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(Ipv4Addr::new(base[0], base[1], base[2], 0)) & mask;
        let gw = Ipv4Addr::from(network | (host & !mask));
        vec![
            (
                "base_ip",
                Some(quoted(&format!("{}.{}.{}.", base[0], base[1], base[2]))),
            ),
            ("first_ip", Some(first_ip.to_string())),
            ("netmask", Some(quoted(&Ipv4Addr::from(mask).to_string()))),
            ("gw", Some(quoted(&gw.to_string()))),
            ("gateway", Some("true".to_string())),
            ("host_loopback", None),
            ("ping", None),
            ("base", None),
        ]
    });
    // One list per field above, in their order.
    let near_misses: [&[&str]; 8] = [
        &["\"10.0.2\"", "\"1.2.3.4.\"", "\"256.1.1.\"", "\"\"", "\"10..2.\"", "1"],
        &["0", "1", "3", "176", "254", "255", "256", "-1", "\"92\""],
        &[
            "\"0.0.0.0\"",
            "\"128.0.0.0\"",
            "\"254.0.0.0\"",
            "\"255.255.255.254\"",
            "\"255.255.255.255\"",
            "\"255.0.255.0\"",
            "\"1.2.3\"",
        ],
        &["\"10.0.3.2\"", "\"1.1.1.1\"", "\"0.0.0.0\"", "\"10.0.2.256\""],
        &["false", "1"],
        &["true", "false"],
        &["\"10.0.2.2\"", "\"x\""],
        &["1"],
    ];
    let mutation = (0..8usize, any::<prop::sample::Index>(), prop::bool::weighted(0.2));
    (valid, prop::collection::vec(mutation, 0..3)).prop_map(move |(mut fields, mutations)| {
        for (field, choice, drop) in mutations {
            let misses = near_misses[field];
            fields[field].1 = (!drop).then(|| choice.get(misses).to_string());
        }
        entry(fields)
    })
}

/// A kernel parameter, often one evum sets, in one of the spellings the
/// kernel reads it in.
fn kernel_arg() -> impl Strategy<Value = String> {
    let names = vec![
        "con",
        "ssl",
        "ubd",
        "eth",
        "vec",
        "umid",
        "uml_dir",
        "hostfs",
        "initrd",
        "console",
        "init",
        "mem",
        "panic",
        "initrdmem",
    ];
    let numbers = vec![
        "",
        "0",
        "1",
        "00",
        "0x1",
        "+0",
        "1r",
        "0rs",
        "b",
        "a",
        "A",
        "x",
        "_x",
        "4294967296",
        "0:transport",
        ":",
    ];
    let value = prop::option::of("[a-z0-9/,:=]{0,8}");
    let spelled = (prop::sample::select(names), prop::sample::select(numbers), value).prop_map(
        |(name, number, value)| match value {
            Some(value) => format!("{name}{number}={value}"),
            None => format!("{name}{number}"),
        },
    );
    prop_oneof![3 => spelled, 1 => any::<String>()]
}

fn image() -> impl Strategy<Value = String> {
    let text = || prop_oneof![3 => "[a-z0-9/._-]{1,12}", 1 => any::<String>()];
    let uri = prop_oneof![
        prop::sample::select(vec![
            "http://example.org/a.img",
            "http://example.org/",
            "https://h/p/root.tar.xz?x=1",
            "file:///srv/x",
            "http://"
        ])
        .prop_map(String::from),
        text(),
    ];
    let hex = |len: usize| {
        let digits = proptest::string::string_regex(&format!("[0-9a-fA-F]{{{len}}}")).unwrap();
        prop_oneof![digits, proptest::string::string_regex("[0-9a-fA-Z]{0,70}").unwrap()]
    };
    let size = prop_oneof!["[0-9]{1,4}[KMGkmgx]{0,2}", text()];
    let debootstrap = (
        "[a-z]{1,8}",
        prop::option::of(text()),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(|(suite, mirror, include)| {
            let mut fields = vec![format!("suite = {}", quoted(&suite))];
            if let Some(mirror) = mirror {
                fields.push(format!("mirror = {}", quoted(&mirror)));
            }
            let include: Vec<String> = include.iter().map(|s| quoted(s)).collect();
            fields.push(format!("include = [{}]", include.join(", ")));
            format!("{{ {} }}", fields.join(", "))
        });
    let args = prop::collection::vec(
        prop::collection::vec(kernel_arg(), 1..3).prop_map(|a| a.join(" ")),
        0..3,
    )
    .prop_map(|args| format!("[{}]", args.iter().map(|a| quoted(a)).collect::<Vec<_>>().join(", ")));
    (
        (
            prop::option::weighted(0.6, text().prop_map(|s| quoted(&s))),
            prop::option::weighted(0.3, uri.prop_map(|s| quoted(&s))),
            prop::option::weighted(0.2, hex(64).prop_map(|s| quoted(&s))),
            prop::option::weighted(0.2, hex(32).prop_map(|s| quoted(&s))),
            prop::option::weighted(0.2, text().prop_map(|s| quoted(&s))),
            prop::option::weighted(0.2, text().prop_map(|s| quoted(&s))),
        ),
        (
            prop::option::weighted(0.2, debootstrap),
            prop::option::weighted(0.3, size.prop_map(|s| quoted(&s))),
            prop::option::weighted(0.6, args),
            prop::option::of(any::<bool>().prop_map(|b| b.to_string())),
            prop::option::of(text().prop_map(|s| quoted(&s))),
        ),
    )
        .prop_map(
            |((file, uri, sha256, md5, dir, from_dir), (debootstrap, size, args, net, init))| {
                entry(vec![
                    ("file", file),
                    ("uri", uri),
                    ("sha256", sha256),
                    ("md5", md5),
                    ("dir", dir),
                    ("from_dir", from_dir),
                    ("debootstrap", debootstrap),
                    ("size", size),
                    ("args", args),
                    ("net", net),
                    ("init", init),
                ])
            },
        )
}

/// A configuration file: networks and images, near valid.
fn file() -> impl Strategy<Value = String> {
    let name = prop_oneof![4 => "[a-z][a-z0-9_]{0,5}", 1 => Just("busybox".to_string()), 1 => Just("host".to_string())];
    let table = prop_oneof![
        (name.clone(), network()).prop_map(|(name, body)| format!("[network.{name}]\n{body}")),
        (name, image()).prop_map(|(name, body)| format!("[image.{name}]\n{body}")),
    ];
    prop::collection::vec(table, 0..4).prop_map(|tables| tables.join("\n"))
}

/// The kernel's `simple_strtoul(s, &end, 0)`'s length read: 0x for hex, a
/// leading 0 for octal; 0 when it reads no digit.
fn strtoul_len(s: &[u8]) -> usize {
    let hex = s.len() > 2 && s[0] == b'0' && s[1].eq_ignore_ascii_case(&b'x') && s[2].is_ascii_hexdigit();
    let (radix, start) = match s.first() {
        _ if hex => (16, 2),
        Some(b'0') => (8, 0),
        _ => (10, 0),
    };
    let digits = s[start..].iter().take_while(|&&b| (b as char).is_digit(radix)).count();
    if digits == 0 {
        0
    } else {
        start + digits
    }
}

/// Whether the kernel takes `arg` for one of the devices or settings evum
/// sets, as UML's setup functions read it: names are prefixes, console and
/// serial lines and network devices numbered by strtoul (`con=` for all
/// lines), disks by number or letter with flags (`ubd1r=`, `ubdb=`, `ubd=`
/// for all), vector devices by kstrtouint up to a colon (`vec+0:`).
fn evums_own(arg: &str) -> bool {
    if ["umid=", "uml_dir=", "hostfs=", "initrd="]
        .iter()
        .any(|p| arg.starts_with(p))
    {
        return true;
    }
    let numbered = |rest: &str| {
        let end = strtoul_len(rest.as_bytes());
        end > 0 && rest[end..].starts_with('=')
    };
    if let Some(rest) = arg.strip_prefix("con").or_else(|| arg.strip_prefix("ssl")) {
        return rest.starts_with('=') || numbered(rest);
    }
    if let Some(rest) = arg.strip_prefix("eth") {
        return numbered(rest);
    }
    if let Some(rest) = arg.strip_prefix("vec") {
        let Some((number, _)) = rest.split_once(':') else {
            return false;
        };
        let number = number.strip_prefix('+').unwrap_or(number);
        return !number.is_empty() && strtoul_len(number.as_bytes()) == number.len();
    }
    if let Some(rest) = arg.strip_prefix("ubd") {
        let unit = match rest.as_bytes().first() {
            Some(b'=') => return true,
            Some(b'0'..=b'9') => strtoul_len(rest.as_bytes()),
            Some(b'a'..=b'z') => 1,
            _ => return false,
        };
        return rest[unit..]
            .trim_start_matches(['r', 's', 'c', 'd', 't'])
            .starts_with('=');
    }
    false
}

/// The documented limits of a network, checked from scratch.
fn network_is_within_limits(net: &Network) -> Result<(), String> {
    let octets: Vec<&str> = net.base_ip.strip_suffix('.').unwrap_or("x").split('.').collect();
    if octets.len() != 3 || octets.iter().any(|o| o.parse::<u8>().is_err()) {
        return Err(format!("base_ip {:?}", net.base_ip));
    }
    if !(1..=254).contains(&net.first_ip) {
        return Err(format!("first_ip {}", net.first_ip));
    }
    if net.host_loopback && !net.gateway {
        return Err("host_loopback without a gateway".into());
    }
    if net.gateway {
        // The gateway's own addresses below the guests', its 16 DHCP leases
        // above the static ones; a netmask of /8 to /30, gw inside it.
        if !(4..=255 - STATIC_ADDRESSES - 16).contains(&net.first_ip) {
            return Err(format!("first_ip {} with a gateway", net.first_ip));
        }
        let prefix = (8..=30).find(|&p| u32::from(net.netmask) == u32::MAX << (32 - p));
        let Some(prefix) = prefix else {
            return Err(format!("netmask {}", net.netmask));
        };
        let base: Ipv4Addr = format!("{}0", net.base_ip).parse().map_err(|_| "base_ip".to_string())?;
        if u32::from(net.gw) >> (32 - prefix) != u32::from(base) >> (32 - prefix) {
            return Err(format!("gw {} outside {base}/{prefix}", net.gw));
        }
    }
    Ok(())
}

fn image_is_within_limits(name: &str, image: &Image) -> Result<(), String> {
    if BUILTIN_IMAGES.contains(&name) {
        return Err(format!("{name} redefined"));
    }
    // The NIF encodes every accepted image's source, trusting it is there.
    let source = image.source().map_err(|(key, why)| format!("{key}: {why}"))?;
    let sources = [
        image.file.is_some() || image.uri.is_some(),
        image.dir.is_some(),
        image.from_dir.is_some(),
        image.debootstrap.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err("not exactly one source".into());
    }
    if let Source::Download {
        checksum: Some(Checksum::Sha256(h) | Checksum::Md5(h)),
        ..
    } = source
    {
        if !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) || (h.len() != 64 && h.len() != 32) {
            return Err(format!("checksum {h}"));
        }
    }
    if image.size.is_some() && image.from_dir.is_none() && image.debootstrap.is_none() {
        return Err("size of an image evum does not build".into());
    }
    for arg in image.args.iter().flat_map(|a| a.split(|c: char| c.is_whitespace())) {
        if evums_own(arg) {
            return Err(format!("args has {arg}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text_is_read_or_refused_naming_the_file(text in prop_oneof![any::<String>(), "[\\[\\]a-z_.=\" \n0-9{}]{0,80}"]) {
        if let Err(e) = load(&text) {
            prop_assert_eq!(e.file, PathBuf::from(FILE));
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn a_file_damaged_anywhere_is_read_or_refused(text in file(), at in any::<prop::sample::Index>(), cut in any::<bool>(), byte in any::<char>()) {
        let mut chars: Vec<char> = text.chars().collect();
        if !chars.is_empty() {
            let i = at.index(chars.len());
            if cut {
                chars.truncate(i);
            } else {
                chars[i] = byte;
            }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(config) = load(&text) {
            for (name, image) in &config.images {
                prop_assert!(image_is_within_limits(name, image).is_ok(), "{}", text);
            }
        }
    }

    #[test]
    fn what_is_accepted_keeps_the_documented_limits(text in file()) {
        let Ok(config) = load(&text) else {
            return Ok(());
        };
        for (name, net) in &config.networks {
            let checked = network_is_within_limits(net);
            prop_assert!(checked.is_ok(), "network {}: {:?} in\n{}", name, checked, text);
        }
        for (name, image) in &config.images {
            let checked = image_is_within_limits(name, image);
            prop_assert!(checked.is_ok(), "image {}: {:?} in\n{}", name, checked, text);
        }
    }

    #[test]
    fn a_value_is_judged_as_the_same_text_is(text in file()) {
        // The original evm.cfg arrives as a toml::Value: the same checks.
        let Ok(value) = toml::from_str::<toml::Value>(&text) else {
            return Ok(());
        };
        let mut from_value = Config::default();
        let from_value = from_value.merge_value(Path::new(FILE), value).map(|()| from_value);
        match (load(&text), from_value) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            // A file wrong in several places may be refused for another
            // one first: a value's tables are read in key order.
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "text {:?}, value {:?}", a, b),
        }
    }
}

#[test]
fn the_model_reads_arguments_as_the_kernel_does() {
    for own in [
        "con0=fd:0",
        "con=null",
        "ssl00=x",
        "eth0x1=tuntap",
        "vec+0:transport=tap",
        "ubd1r=/etc/shadow",
        "ubdb=x",
        "ubd=sync",
        "initrd=/x",
    ] {
        assert!(evums_own(own), "{own}");
    }
    for other in [
        "console=ttyS0",
        "init=/bin/sh",
        "initrdmem=1",
        "ubdA=x",
        "ethX=y",
        "vec0",
        "panic=1",
    ] {
        assert!(!evums_own(other), "{other}");
    }
}
