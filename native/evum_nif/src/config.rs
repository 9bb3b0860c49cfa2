//! The Erlang face of evum_core::image::config: loads the layers a BEAM names and
//! answers the merged configuration as maps. The original evm.cfg arrives
//! as the terms `file:consult/1` read; they are turned into the same value
//! a toml file gives, so both formats pass the same checks.

use std::path::Path;

use evum_core::image::config::{Checksum, Config, ConfigError, Image, Network, Source};
use rustler::{Encoder, Env, NifResult, Term, TermType};
use toml::{Table, Value};

mod atoms {
    rustler::atoms! {
        ok, error, config, toml, terms, undefined, networks, images,
        base_ip, first_ip, netmask, gw, ping, gateway, host_loopback,
        source, file, download, dir, from_dir, debootstrap, sha256, md5,
        size, args, net, init,
    }
}

/// `config_load([{toml, Path} | {terms, Path, Terms}])` ->
/// `{ok, Config, Warnings}` or `{error, {config, File, Key, Message}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn config_load<'a>(env: Env<'a>, layers: Vec<Term<'a>>) -> NifResult<Term<'a>> {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    for layer in layers {
        let loaded = if let Ok((kind, path)) = layer.decode::<(rustler::Atom, Term)>() {
            if kind != atoms::toml() {
                return Err(rustler::Error::BadArg);
            }
            config.merge_toml_file(Path::new(&crate::text(path)?))
        } else {
            let (kind, path, terms): (rustler::Atom, Term, Term) = layer.decode()?;
            if kind != atoms::terms() {
                return Err(rustler::Error::BadArg);
            }
            let file = crate::text(path)?;
            let file = Path::new(&file);
            let mut legacy = Legacy {
                warnings: &mut warnings,
                file,
            };
            match legacy.table(terms, "") {
                Ok(table) => config.merge_value(file, Value::Table(table)),
                Err(e) => Err(e),
            }
        };
        if let Err(ConfigError { file, key, message }) = loaded {
            let file = file.to_string_lossy().into_owned();
            return Ok((atoms::error(), (atoms::config(), file, key, message)).encode(env));
        }
    }
    Ok((atoms::ok(), encode_config(env, &config)?, warnings).encode(env))
}

/// Turns the original evm.cfg's terms into a toml value: proplists become
/// tables, strings (charlists) strings, and an image's `args` list of
/// `{Name, Value}` and `{Name, Index, Value}` kernel arguments the strings
/// `"name=value"` and `"nameN=value"`.
struct Legacy<'w> {
    warnings: &'w mut Vec<String>,
    file: &'w Path,
}

impl Legacy<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.into(),
            key: key.trim_start_matches('.').into(),
            message: message.into(),
        }
    }

    fn table(&mut self, term: Term, key: &str) -> Result<Table, ConfigError> {
        let items: Vec<Term> = term
            .decode()
            .map_err(|_| self.error(key, "expected a list of {Key, Value}"))?;
        let mut table = Table::new();
        for item in items {
            let (name, value) = match item.decode::<(Term, Term)>() {
                Ok((name, value)) if name.is_atom() => (name.atom_to_string().unwrap_or_default(), value),
                _ => return Err(self.error(key, format!("expected {{Key, Value}}, got {item:?}"))),
            };
            let at = format!("{key}.{name}");
            let in_image = key.strip_prefix(".image.").is_some_and(|rest| !rest.contains('.'));
            let nested =
                matches!(at.matches('.').count(), 1 | 2) && (at.starts_with(".image") || at.starts_with(".network"));
            if in_image && name == "args" {
                self.image_args(value, &mut table, &at)?;
            } else if nested {
                table.insert(name, Value::Table(self.table(value, &at)?));
            } else {
                table.insert(name, self.value(value, &at)?);
            }
        }
        Ok(table)
    }

    fn value(&mut self, term: Term, key: &str) -> Result<Value, ConfigError> {
        Ok(match term.get_type() {
            TermType::Binary => Value::String(crate::text(term).map_err(|_| self.error(key, "expected UTF-8 text"))?),
            TermType::Integer => Value::Integer(term.decode().map_err(|_| self.error(key, "integer out of range"))?),
            TermType::Float => Value::Float(term.decode().unwrap_or_default()),
            TermType::Atom => match term.atom_to_string().unwrap_or_default().as_str() {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                other => Value::String(other.into()),
            },
            TermType::List => match charlist(term) {
                Some(text) => Value::String(text),
                None => {
                    let items: Vec<Term> = term.decode().map_err(|_| self.error(key, "expected a proper list"))?;
                    Value::Array(
                        items
                            .into_iter()
                            .map(|t| self.value(t, key))
                            .collect::<Result<_, _>>()?,
                    )
                }
            },
            _ => return Err(self.error(key, format!("expected text, a number or a list, got {term:?}"))),
        })
    }

    /// `{net, true}` and `{init, Path}` become the image's own keys; the
    /// console and serial lines are evum's, so `con` and `ssl` are dropped
    /// with a warning; the rest become kernel arguments.
    fn image_args(&mut self, term: Term, entry: &mut Table, key: &str) -> Result<(), ConfigError> {
        let items: Vec<Term> = term
            .decode()
            .map_err(|_| self.error(key, "expected a list of {Name, Value}"))?;
        let mut kernel_args = Vec::new();
        for item in items {
            let (name, index, value) = if let Ok((name, value)) = item.decode::<(rustler::Atom, Term)>() {
                (name, None, value)
            } else if let Ok((name, index, value)) = item.decode::<(rustler::Atom, u32, Term)>() {
                (name, Some(index), value)
            } else {
                return Err(self.error(
                    key,
                    format!("expected {{Name, Value}} or {{Name, Index, Value}}, got {item:?}"),
                ));
            };
            let name = name.to_term(term.get_env()).atom_to_string().unwrap_or_default();
            let at = format!("{key}.{name}");
            match (name.as_str(), index, self.value(value, &at)?) {
                ("net", None, Value::Boolean(net)) => {
                    entry.insert("net".into(), Value::Boolean(net));
                }
                ("init", None, Value::String(init)) => {
                    entry.insert("init".into(), Value::String(init));
                }
                ("con" | "ssl", ..) => self.warnings.push(format!(
                    "{}: {}: {name} dropped: evum keeps the console on con0 and its command channel on ssl0",
                    self.file.display(),
                    key.trim_start_matches('.')
                )),
                (_, index, Value::String(v)) => kernel_args.push(Value::String(format!(
                    "{name}{}={v}",
                    index.map(|i| i.to_string()).unwrap_or_default()
                ))),
                (_, None, Value::Integer(v)) => kernel_args.push(Value::String(format!("{name}={v}"))),
                (_, None, Value::Boolean(true)) => kernel_args.push(Value::String(name)),
                (_, _, other) => return Err(self.error(&at, format!("expected text, got {other}"))),
            }
        }
        entry.insert("args".into(), Value::Array(kernel_args));
        Ok(())
    }
}

/// A list of printable character codes: an Erlang string.
fn charlist(term: Term) -> Option<String> {
    let codes: Vec<u32> = term.decode().ok()?;
    if codes.is_empty() {
        return None;
    }
    codes
        .into_iter()
        .map(char::from_u32)
        .collect::<Option<String>>()
        .filter(|s| !s.chars().any(char::is_control))
}

fn encode_config<'a>(env: Env<'a>, config: &Config) -> NifResult<Term<'a>> {
    let named = |pairs: Vec<(Term<'a>, Term<'a>)>| Term::map_from_pairs(env, &pairs);
    let name = |n: &str| {
        rustler::Atom::from_str(env, n)
            .map(|a| a.encode(env))
            .unwrap_or_else(|_| n.encode(env))
    };
    let networks = config
        .networks
        .iter()
        .map(|(n, net)| Ok((name(n), encode_network(env, net)?)))
        .collect::<NifResult<_>>()?;
    let images = config
        .images
        .iter()
        .map(|(n, image)| Ok((name(n), encode_image(env, image)?)))
        .collect::<NifResult<_>>()?;
    crate::atom_map(
        env,
        &[(atoms::networks(), named(networks)?), (atoms::images(), named(images)?)],
    )
}

fn optional<'a, T: Encoder>(env: Env<'a>, value: Option<T>) -> Term<'a> {
    match value {
        Some(v) => v.encode(env),
        None => atoms::undefined().encode(env),
    }
}

fn encode_network<'a>(env: Env<'a>, net: &Network) -> NifResult<Term<'a>> {
    let pairs = [
        (atoms::base_ip(), net.base_ip.encode(env)),
        (atoms::first_ip(), net.first_ip.encode(env)),
        (atoms::netmask(), net.netmask.to_string().encode(env)),
        (atoms::gw(), net.gw.to_string().encode(env)),
        (atoms::ping(), optional(env, net.ping.map(|p| p.to_string()))),
        (atoms::gateway(), net.gateway.encode(env)),
        (atoms::host_loopback(), net.host_loopback.encode(env)),
    ];
    crate::atom_map(env, &pairs)
}

fn encode_image<'a>(env: Env<'a>, image: &Image) -> NifResult<Term<'a>> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let source = match image.source().expect("checked when merged") {
        Source::File(file) => (atoms::file(), file).encode(env),
        Source::Download { file, uri, checksum } => {
            let checksum = match checksum {
                Some(Checksum::Sha256(hex)) => (atoms::sha256(), hex).encode(env),
                Some(Checksum::Md5(hex)) => (atoms::md5(), hex).encode(env),
                None => atoms::undefined().encode(env),
            };
            (atoms::download(), file, uri, checksum).encode(env)
        }
        Source::Dir(dir) => (atoms::dir(), path(dir)).encode(env),
        Source::FromDir(dir) => (atoms::from_dir(), path(dir)).encode(env),
        Source::Debootstrap(d) => {
            let mirror = optional(env, d.mirror.as_deref());
            (atoms::debootstrap(), d.suite.as_str(), mirror, &d.include).encode(env)
        }
    };
    let pairs = [
        (atoms::source(), source),
        (atoms::size(), optional(env, image.size.as_deref())),
        (atoms::args(), image.args.encode(env)),
        (atoms::net(), image.net.encode(env)),
        (atoms::init(), optional(env, image.init.as_deref())),
    ];
    crate::atom_map(env, &pairs)
}
