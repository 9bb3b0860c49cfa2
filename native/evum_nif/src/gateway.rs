//! The Erlang face of evum_core::gateway: a resource per gateway, forwards
//! and counters as terms.
//!
//! Addresses go in as binaries (`<<"127.0.0.1">>`) or 4-tuples and come out
//! as binaries. Errors are `{error, {Kind, Message}}` with Kind one of
//! `config`, `connect`, `setup`, `slirp`, `invalid_forward`, `exists`,
//! `not_found`, `bind`, or `{error, not_running}` once stopped; malformed
//! arguments raise badarg. Everything that waits for the gateway thread runs
//! on a dirty I/O scheduler.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use evum_core::gateway::{FlowOrigin, FlowProto, Forward, Gateway, GatewayConfig, GatewayError, Proto};
use rustler::{Atom, Encoder, Env, NifResult, ResourceArc, Term};

use crate::switch::{try_with_switch, SwitchResource};
use crate::{atom_map, text};

mod atoms {
    rustler::atoms! {
        ok, error, not_running, tcp, udp, icmp, guest, forward,
        config, connect, setup, slirp, invalid_forward, exists, not_found, bind,
        network, prefix_len, gateway, dns, dhcp_start, dns_forwarding, host_loopback,
        max_flows_per_guest, max_flows, tcp_idle_timeout_ms, udp_idle_timeout_ms, mtu,
        proto, host_addr, host_port, guest_addr, guest_port, connections,
        bytes_to_guest, bytes_from_guest, packets_to_guest, packets_from_guest,
        remote_addr, remote_port, origin, started_ms, idle_ms, closed,
        frames_from_switch, bytes_from_switch, frames_to_switch, bytes_to_switch,
        flows_opened, flows_active, dhcp_requests, fragments, untracked, guest_errors,
        drops, flows, malformed, oversized, unsupported, not_for_gateway, bad_source,
        dns_refused, flow_limit_guest, flow_limit_total, output_full, output_error,
    }
}

/// A gateway; dropping the last reference stops its thread, which closes
/// its sockets and forwards.
pub struct GatewayResource {
    gateway: Mutex<Option<Gateway>>,
}

#[rustler::resource_impl]
impl rustler::Resource for GatewayResource {}

fn gateway_error<'a>(env: Env<'a>, e: GatewayError) -> Term<'a> {
    let kind = match &e {
        GatewayError::Config(_) => atoms::config(),
        GatewayError::Connect { .. } => atoms::connect(),
        GatewayError::Setup(_) => atoms::setup(),
        GatewayError::Slirp => atoms::slirp(),
        GatewayError::InvalidForward(_) => atoms::invalid_forward(),
        GatewayError::ForwardExists(..) => atoms::exists(),
        GatewayError::NoSuchForward(..) => atoms::not_found(),
        GatewayError::Bind(..) => atoms::bind(),
        GatewayError::Stopped => return (atoms::error(), atoms::not_running()).encode(env),
    };
    (atoms::error(), (kind, e.to_string())).encode(env)
}

/// Runs `f` on the gateway, or answers `{error, not_running}` once stopped.
fn with_gateway<'a>(
    env: Env<'a>,
    res: &GatewayResource,
    f: impl FnOnce(&Gateway) -> NifResult<Term<'a>>,
) -> NifResult<Term<'a>> {
    match res.gateway.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(gateway) => f(gateway),
        None => Ok((atoms::error(), atoms::not_running()).encode(env)),
    }
}

/// `<<"10.0.2.2">>` or `{10, 0, 2, 2}`.
fn address(term: Term) -> NifResult<Ipv4Addr> {
    if let Ok((a, b, c, d)) = term.decode::<(u8, u8, u8, u8)>() {
        return Ok(Ipv4Addr::new(a, b, c, d));
    }
    text(term)?.parse().map_err(|_| rustler::Error::BadArg)
}

fn address_term<'a>(env: Env<'a>, addr: &Ipv4Addr) -> Term<'a> {
    addr.to_string().encode(env)
}

fn proto(term: Term) -> NifResult<Proto> {
    let atom: Atom = term.decode()?;
    if atom == atoms::tcp() {
        Ok(Proto::Tcp)
    } else if atom == atoms::udp() {
        Ok(Proto::Udp)
    } else {
        Err(rustler::Error::BadArg)
    }
}

fn proto_atom(p: Proto) -> Atom {
    match p {
        Proto::Tcp => atoms::tcp(),
        Proto::Udp => atoms::udp(),
    }
}

/// The configuration map: every key optional, unknown keys refused.
fn gateway_config(map: Term) -> NifResult<GatewayConfig> {
    let mut config = GatewayConfig::default();
    for (key, value) in map.decode::<rustler::MapIterator>()? {
        let key: Atom = key.decode()?;
        let ms = |v: Term| v.decode::<u64>().map(Duration::from_millis);
        if key == atoms::network() {
            config.network = address(value)?;
        } else if key == atoms::prefix_len() {
            config.prefix_len = value.decode()?;
        } else if key == atoms::gateway() {
            config.gateway = address(value)?;
        } else if key == atoms::dns() {
            config.dns = address(value)?;
        } else if key == atoms::dhcp_start() {
            config.dhcp_start = address(value)?;
        } else if key == atoms::dns_forwarding() {
            config.dns_forwarding = value.decode()?;
        } else if key == atoms::host_loopback() {
            config.host_loopback = value.decode()?;
        } else if key == atoms::max_flows_per_guest() {
            config.max_flows_per_guest = value.decode()?;
        } else if key == atoms::max_flows() {
            config.max_flows = value.decode()?;
        } else if key == atoms::tcp_idle_timeout_ms() {
            config.tcp_idle_timeout = ms(value)?;
        } else if key == atoms::udp_idle_timeout_ms() {
            config.udp_idle_timeout = ms(value)?;
        } else if key == atoms::mtu() {
            config.mtu = value.decode()?;
        } else {
            return Err(rustler::Error::BadArg);
        }
    }
    Ok(config)
}

/// Connects a gateway to `switch` and gives it the gateway's addresses
/// (`Switch::guard`): `{ok, Gateway}`.
#[rustler::nif(schedule = "DirtyIo")]
fn gateway_start<'a>(env: Env<'a>, switch: ResourceArc<SwitchResource>, config: Term<'a>) -> NifResult<Term<'a>> {
    let config = gateway_config(config)?;
    let guarded = vec![config.gateway, config.dns];
    try_with_switch(env, &switch, |switch| {
        let gateway = match Gateway::start(config, &switch.bess_socket()) {
            Ok(gateway) => gateway,
            Err(e) => return Ok(gateway_error(env, e)),
        };
        if switch.guard(guarded).is_err() {
            gateway.stop();
            return Ok((atoms::error(), atoms::not_running()).encode(env));
        }
        let resource = GatewayResource {
            gateway: Mutex::new(Some(gateway)),
        };
        Ok((atoms::ok(), ResourceArc::new(resource)).encode(env))
    })
}

/// Stops the gateway and waits until its sockets and forwards are closed.
#[rustler::nif(schedule = "DirtyIo")]
fn gateway_stop(resource: ResourceArc<GatewayResource>) -> Atom {
    let gateway = resource.gateway.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(gateway) = gateway {
        gateway.stop();
    }
    atoms::ok()
}

/// `{Proto, HostAddr, HostPort, GuestAddr, GuestPort}`: `{ok, BoundPort}`.
#[rustler::nif(schedule = "DirtyIo")]
fn gateway_add_forward<'a>(
    env: Env<'a>,
    resource: ResourceArc<GatewayResource>,
    spec: Term<'a>,
) -> NifResult<Term<'a>> {
    let (p, host_addr, host_port, guest_addr, guest_port): (Term, Term, u16, Term, u16) = spec.decode()?;
    let forward = Forward {
        proto: proto(p)?,
        host_addr: address(host_addr)?,
        host_port,
        guest_addr: address(guest_addr)?,
        guest_port,
    };
    with_gateway(env, &resource, |g| {
        Ok(match g.add_forward(forward) {
            Ok(bound) => (atoms::ok(), bound.host_port).encode(env),
            Err(e) => gateway_error(env, e),
        })
    })
}

/// `{Proto, HostAddr, HostPort}`: `ok`.
#[rustler::nif(schedule = "DirtyIo")]
fn gateway_remove_forward<'a>(
    env: Env<'a>,
    resource: ResourceArc<GatewayResource>,
    spec: Term<'a>,
) -> NifResult<Term<'a>> {
    let (p, host_addr, host_port): (Term, Term, u16) = spec.decode()?;
    let (p, host) = (proto(p)?, SocketAddrV4::new(address(host_addr)?, host_port));
    with_gateway(env, &resource, |g| {
        Ok(match g.remove_forward(p, host) {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => gateway_error(env, e),
        })
    })
}

/// `{ok, [#{proto, host_addr, host_port, guest_addr, guest_port,
/// connections, bytes_to_guest, bytes_from_guest}]}`.
#[rustler::nif(schedule = "DirtyIo")]
fn gateway_forwards(env: Env, resource: ResourceArc<GatewayResource>) -> NifResult<Term> {
    with_gateway(env, &resource, |g| {
        let forwards = match g.forwards() {
            Ok(f) => f,
            Err(e) => return Ok(gateway_error(env, e)),
        };
        let mut out = Vec::with_capacity(forwards.len());
        for f in forwards {
            out.push(atom_map(
                env,
                &[
                    (atoms::proto(), proto_atom(f.forward.proto).encode(env)),
                    (atoms::host_addr(), address_term(env, &f.forward.host_addr)),
                    (atoms::host_port(), f.forward.host_port.encode(env)),
                    (atoms::guest_addr(), address_term(env, &f.forward.guest_addr)),
                    (atoms::guest_port(), f.forward.guest_port.encode(env)),
                    (atoms::connections(), f.connections.encode(env)),
                    (atoms::bytes_to_guest(), f.bytes_to_guest.encode(env)),
                    (atoms::bytes_from_guest(), f.bytes_from_guest.encode(env)),
                ],
            )?);
        }
        Ok((atoms::ok(), out).encode(env))
    })
}

/// `{ok, #{frames_from_switch, ..., drops => #{Reason => N},
/// flows => [#{proto, guest_addr, guest_port, remote_addr, remote_port,
/// origin, packets_*, bytes_*, started_ms, idle_ms, closed}]}}`, origin being
/// `guest` or `{forward, Proto, HostAddr, HostPort}`.
#[rustler::nif(schedule = "DirtyIo")]
fn gateway_counters(env: Env, resource: ResourceArc<GatewayResource>) -> NifResult<Term> {
    with_gateway(env, &resource, |g| {
        let (c, flows) = match g.counters().and_then(|c| Ok((c, g.flows()?))) {
            Ok(both) => both,
            Err(e) => return Ok(gateway_error(env, e)),
        };
        let d = c.drops;
        let drops = atom_map(
            env,
            &[
                (atoms::malformed(), d.malformed.encode(env)),
                (atoms::oversized(), d.oversized.encode(env)),
                (atoms::unsupported(), d.unsupported.encode(env)),
                (atoms::not_for_gateway(), d.not_for_gateway.encode(env)),
                (atoms::bad_source(), d.bad_source.encode(env)),
                (atoms::dns_refused(), d.dns_refused.encode(env)),
                (atoms::flow_limit_guest(), d.flow_limit_guest.encode(env)),
                (atoms::flow_limit_total(), d.flow_limit_total.encode(env)),
                (atoms::output_full(), d.output_full.encode(env)),
                (atoms::output_error(), d.output_error.encode(env)),
            ],
        )?;
        let mut flow_terms = Vec::with_capacity(flows.len());
        for f in flows {
            let proto = match f.proto {
                FlowProto::Tcp => atoms::tcp(),
                FlowProto::Udp => atoms::udp(),
                FlowProto::Icmp => atoms::icmp(),
            };
            let origin = match f.origin {
                FlowOrigin::Guest => atoms::guest().encode(env),
                FlowOrigin::Forward(p, host) => (
                    atoms::forward(),
                    proto_atom(p),
                    address_term(env, host.ip()),
                    host.port(),
                )
                    .encode(env),
            };
            let started_ms = f
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            flow_terms.push(atom_map(
                env,
                &[
                    (atoms::proto(), proto.encode(env)),
                    (atoms::guest_addr(), address_term(env, f.guest.ip())),
                    (atoms::guest_port(), f.guest.port().encode(env)),
                    (atoms::remote_addr(), address_term(env, f.remote.ip())),
                    (atoms::remote_port(), f.remote.port().encode(env)),
                    (atoms::origin(), origin),
                    (atoms::packets_from_guest(), f.packets_from_guest.encode(env)),
                    (atoms::bytes_from_guest(), f.bytes_from_guest.encode(env)),
                    (atoms::packets_to_guest(), f.packets_to_guest.encode(env)),
                    (atoms::bytes_to_guest(), f.bytes_to_guest.encode(env)),
                    (atoms::started_ms(), started_ms.encode(env)),
                    (
                        atoms::idle_ms(),
                        u64::try_from(f.idle.as_millis()).unwrap_or(u64::MAX).encode(env),
                    ),
                    (atoms::closed(), f.closed.encode(env)),
                ],
            )?);
        }
        let counters = atom_map(
            env,
            &[
                (atoms::frames_from_switch(), c.frames_from_switch.encode(env)),
                (atoms::bytes_from_switch(), c.bytes_from_switch.encode(env)),
                (atoms::frames_to_switch(), c.frames_to_switch.encode(env)),
                (atoms::bytes_to_switch(), c.bytes_to_switch.encode(env)),
                (atoms::flows_opened(), c.flows_opened.encode(env)),
                (atoms::flows_active(), c.flows_active.encode(env)),
                (atoms::dhcp_requests(), c.dhcp_requests.encode(env)),
                (atoms::fragments(), c.fragments.encode(env)),
                (atoms::untracked(), c.untracked.encode(env)),
                (atoms::guest_errors(), c.guest_errors.encode(env)),
                (atoms::drops(), drops),
                (atoms::flows(), flow_terms.encode(env)),
            ],
        )?;
        Ok((atoms::ok(), counters).encode(env))
    })
}
