//! Property tests of the kernel command line: whatever the options hold,
//! either they are refused or every parameter reaches the kernel whole, and
//! evum's own settings (its identity, console, command channel, memory,
//! hostfs confinement, CPU mode) are set once each, by evum, as the kernel
//! reads parameter names.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::testing::config;

/// One of evum's own kernel settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Setting {
    Umid,
    UmlDir,
    Mem,
    Hostfs,
    Seccomp,
    Ncpus,
    /// `conN=` (`Some(N)`) or `con=`, every line but those named.
    Con(Option<u32>),
    Ssl(Option<u32>),
}

/// The kernel's `simple_strtoul(s, &end, 0)`: the value (wrapped, as the
/// kernel's is) and the length read. 0x for hex, a leading 0 for octal.
fn strtoul(s: &[u8]) -> (u64, usize) {
    let hex = s.len() > 2 && s[0] == b'0' && s[1].eq_ignore_ascii_case(&b'x') && s[2].is_ascii_hexdigit();
    let (radix, start) = match s.first() {
        _ if hex => (16, 2),
        Some(b'0') => (8, 0),
        _ => (10, 0),
    };
    let mut value = 0u64;
    let mut end = start;
    while let Some(digit) = s.get(end).and_then(|&b| (b as char).to_digit(radix)) {
        value = value.wrapping_mul(u64::from(radix)).wrapping_add(u64::from(digit));
        end += 1;
    }
    (value, if end == start { 0 } else { end })
}

/// Which of evum's settings the kernel takes `token` for: UML's setup
/// names are prefixes (`umid=`, `con`), and `line_setup` reads a line
/// number with strtoul into an unsigned int.
fn setting(token: &str) -> Option<Setting> {
    let exact = [
        ("umid=", Setting::Umid),
        ("uml_dir=", Setting::UmlDir),
        ("mem=", Setting::Mem),
        ("hostfs=", Setting::Hostfs),
        ("seccomp=", Setting::Seccomp),
        ("ncpus=", Setting::Ncpus),
    ];
    if let Some((_, s)) = exact.iter().find(|(prefix, _)| token.starts_with(prefix)) {
        return Some(*s);
    }
    for prefix in ["con", "ssl"] {
        let Some(rest) = token.strip_prefix(prefix) else {
            continue;
        };
        let line = |n| {
            if prefix == "con" {
                Setting::Con(n)
            } else {
                Setting::Ssl(n)
            }
        };
        if rest.starts_with('=') {
            return Some(line(None));
        }
        let (n, end) = strtoul(rest.as_bytes());
        if end > 0 && rest[end..].starts_with('=') {
            return Some(line(Some(n as u32)));
        }
    }
    None
}

fn identity() -> impl Strategy<Value = Identity> {
    let umid = prop_oneof![
        "[A-Za-z0-9_.-]{1,12}",
        prop::sample::select(vec!["umid", "mem", "con0", "hostfs"]).prop_map(String::from)
    ];
    // Relative and empty too: the runtime dir an append names is then
    // `umid` alone, or `con0`.
    let uml_dir = prop_oneof![
        Just("/run/evum".to_string()),
        Just(String::new()),
        "/[a-z0-9_/]{0,16}",
        "[a-z0-9_=]{1,8}",
        any::<String>(),
    ];
    (umid, uml_dir).prop_map(|(umid, uml_dir)| Identity {
        umid,
        uml_dir: uml_dir.into(),
    })
}

/// An option's value: plain, anything at all, or plain with a separator,
/// a quote or a control and a parameter of evum's after it.
fn value() -> impl Strategy<Value = String> {
    let separator = prop::sample::select(vec![
        " ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\"", "\u{a0}", "à", "\u{85}", "\0", "\u{7f}",
    ]);
    prop_oneof![
        3 => "[a-zA-Z0-9/,:._=-]{0,12}",
        2 => any::<String>(),
        2 => ("[a-z0-9/]{0,6}", separator, parameter()).prop_map(|(a, sep, p)| format!("{a}{sep}{p}")),
    ]
}

/// A kernel parameter, often one of evum's in another spelling.
fn parameter() -> impl Strategy<Value = String> {
    let names = vec![
        "umid", "uml_dir", "mem", "hostfs", "seccomp", "ncpus", "con", "ssl", "ubd", "eth", "panic", "lpj", "console",
    ];
    let numbers = vec![
        "",
        "0",
        "00",
        "0x0",
        "0X00",
        "000",
        "1",
        "01",
        "0x1",
        "10",
        "4294967296",
        "18446744073709551616",
        "x",
    ];
    (
        prop::sample::select(names),
        prop::sample::select(numbers),
        prop::option::of("[a-z0-9:,/{}_]{0,8}"),
    )
        .prop_map(|(name, number, value)| match value {
            Some(value) => format!("{name}{number}={value}"),
            None => format!("{name}{number}"),
        })
}

fn append() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(parameter(), 1..4).prop_map(|p| p.join(" ")),
        "\\{runtime_dir\\}[/=]?[a-z0-9=]{0,4}",
        value(),
    ]
}

fn option() -> impl Strategy<Value = BootOption> {
    let line = prop::option::of(0..4u32);
    prop_oneof![
        1 => (line.clone(), value()).prop_map(|(n, v)| BootOption::Con(n, v)),
        1 => (line, value()).prop_map(|(n, v)| BootOption::Ssl(n, v)),
        1 => (0..3u32, value()).prop_map(|(n, v)| BootOption::Ubd(n, v)),
        1 => (0..3u32, value()).prop_map(|(n, v)| BootOption::Eth(n, v)),
        1 => value().prop_map(BootOption::Init),
        1 => value().prop_map(|v| BootOption::Initrd(v.into())),
        1 => prop_oneof!["[0-9]{1,4}[KMGkmg]?", value()].prop_map(BootOption::Mem),
        1 => value().prop_map(BootOption::Root),
        1 => value().prop_map(BootOption::RootFlags),
        1 => value().prop_map(BootOption::RootFsType),
        1 => any::<bool>().prop_map(BootOption::Verbose),
        1 => any::<bool>().prop_map(BootOption::Write),
        1 => value().prop_map(|v| BootOption::Hostfs(v.into())),
        1 => (prop_oneof!["[A-Z0-9_]{1,6}", value()], value()).prop_map(|(k, v)| BootOption::Env(k, v)),
        3 => append().prop_map(BootOption::Append),
        1 => Just(BootOption::Cpu(CpuChoice::Any)),
        1 => any::<bool>().prop_map(BootOption::Seccomp),
        1 => (0..10u32).prop_map(BootOption::Cpus),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_parameter_reaches_the_kernel_whole_and_evums_are_its_own(
        id in identity(),
        options in prop::collection::vec(option(), 0..6),
    ) {
        let Ok(args) = kernel_args(&id, &options) else {
            return Ok(());
        };
        for arg in &args {
            // Nothing the kernel's isspace() takes (0x09-0x0d, 0x20, 0xa0),
            // no quote, no control, nothing beyond ASCII.
            prop_assert!(arg.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'), "{:?}", arg);
        }
        let mut set: HashMap<Setting, Vec<&str>> = HashMap::new();
        for arg in &args {
            if let Some(s) = setting(arg) {
                set.entry(s).or_default().push(arg);
            }
        }
        let once = |s: Setting| set.get(&s).map(Vec::as_slice).unwrap_or_default().to_vec();
        let umid = format!("umid={}", id.umid);
        let uml_dir = format!("uml_dir={}", id.uml_dir.display());
        prop_assert_eq!(once(Setting::Umid), vec![umid.as_str()], "{:?}", args);
        prop_assert_eq!(once(Setting::UmlDir), vec![uml_dir.as_str()], "{:?}", args);
        prop_assert_eq!(once(Setting::Con(Some(0))), vec!["con0=fd:0,fd:1"], "{:?}", args);
        prop_assert_eq!(once(Setting::Ssl(Some(0))), vec!["ssl0=fd:3,fd:4"], "{:?}", args);
        for s in [Setting::Con(None), Setting::Ssl(None), Setting::Mem, Setting::Hostfs] {
            prop_assert_eq!(once(s).len(), 1, "{:?} in {:?}", s, args);
        }
        let seccomp = if wants_seccomp(&options) { vec!["seccomp=on"] } else { vec![] };
        prop_assert_eq!(once(Setting::Seccomp), seccomp, "{:?}", args);
        prop_assert!(once(Setting::Ncpus).len() <= 1, "{:?}", args);
    }

    #[test]
    fn memory_in_bytes_is_what_the_command_line_says(m in prop_oneof!["[0-9]{1,22}[KMGkmgx]{0,2}", any::<String>()]) {
        let options = [BootOption::Mem(m.clone())];
        let bytes = memory_bytes(&options);
        match kernel_args(&id(), &options) {
            Ok(args) => {
                let arg = format!("mem={m}");
                prop_assert!(args.contains(&arg));
                // A size the kernel reads: the same number of bytes, unless
                // it does not fit.
                let digits = m.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let shift = match m[digits.len()..].to_ascii_uppercase().as_str() {
                    "K" => 10,
                    "M" => 20,
                    "G" => 30,
                    _ => 0,
                };
                let want = digits.parse::<u128>().ok().map(|n| n << shift).filter(|&n| n <= u128::from(u64::MAX));
                prop_assert_eq!(bytes.map(u128::from), want);
            }
            Err(_) => prop_assert_eq!(bytes, None),
        }
    }
}

fn id() -> Identity {
    Identity {
        umid: "vm1".into(),
        uml_dir: "/run/evum".into(),
    }
}

#[test]
fn the_models_strtoul_is_the_kernels() {
    assert_eq!(strtoul(b"0x1f="), (31, 4));
    assert_eq!(strtoul(b"017="), (15, 3));
    assert_eq!(strtoul(b"0x="), (0, 1));
    assert_eq!(strtoul(b"x"), (0, 0));
    assert_eq!(strtoul(b"18446744073709551616="), (0, 20));
    assert_eq!(setting("con4294967296=pty"), Some(Setting::Con(Some(0))));
    assert_eq!(setting("console=ttyS0"), None);
}
