//! A switch port: where its frames go, its bounded output queue, its counters.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::daemon::RawUnixAddr;
use super::fdb::Mac;
use super::rate::TokenBucket;
use super::{sock, FrameSink, PortId, PortInfo, PortKind};

/// Per-port counters, as [`PortInfo`] reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames dropped because the output queue was full.
    pub drops_queue_full: u64,
    /// Frames the peer refused (it is gone, or the send failed).
    pub drops_send_error: u64,
    /// Frames in over the port's input rate limit.
    pub drops_rate: u64,
    /// Broadcast and multicast frames in over the storm limit.
    pub drops_storm: u64,
    /// Frames in from a source MAC that is not the port's: another than
    /// the one a VM's port is locked to, or one given to another port.
    pub drops_spoofed: u64,
    /// Frames in from a new source MAC while the port has `max_macs`.
    pub drops_mac_limit: u64,
    /// ARP and DHCP frames in that claim what is not the port's (ARP
    /// guard, DHCP snooping; on a switch with a gateway).
    pub drops_guard: u64,
    /// Frames in kept from a port by a partition or a cut, once per port
    /// not reached.
    pub drops_nemesis: u64,
}

/// How frames reach the port's peer.
pub enum Peer {
    /// A UML daemon-transport VM: its control stream (kept open: EOF means
    /// the VM is gone) and the port's datagram socket, connected to the
    /// VM's address: frames to and from the VM.
    Daemon {
        control: std::os::unix::net::UnixStream,
        data: OwnedFd,
        addr: RawUnixAddr,
    },
    /// A UML vector-transport VM in bess mode: one SEQPACKET connection.
    Bess { conn: OwnedFd },
    /// A sink in this process.
    Attached {
        sink: Box<dyn FrameSink>,
        promiscuous: bool,
    },
}

/// What happened to a frame offered to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Sent,
    /// Queued; the socket must be watched for WRITABLE.
    Queued,
    Dropped,
    /// The attached receiver is gone: detach the port.
    Gone,
}

/// What the switch knows of a port's peer, from the name its socket is
/// bound to (see [`super::SwitchConfig::port_security`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Anything the limits allow.
    Open,
    /// A VM's port, locked to the VM's MAC.
    Locked(Mac),
    /// The switch's gateway: the addresses the switch guards are its.
    Gateway,
}

pub struct Port {
    pub id: PortId,
    pub peer: Peer,
    pub role: Role,
    /// The given MAC (attached ports) or the last one learned from it.
    pub mac: Option<Mac>,
    /// The port's input rate limit and storm control (none for the ports
    /// of this process: attached ones and the gateway).
    pub rate: Option<TokenBucket>,
    pub storm: Option<TokenBucket>,
    pub counters: PortCounters,
    pub queue: VecDeque<Vec<u8>>,
    pub queue_limit: usize,
    pub wants_writable: bool,
    /// The peer took nothing from its congested queue for as long as the
    /// switch holds input back: input no longer waits for this port until
    /// its queue has emptied.
    pub stuck: bool,
    /// When the peer last took a frame while its queue was congested (set
    /// as it becomes congested): while it keeps taking frames, however
    /// slowly, its senders are held rather than dropped.
    pub progress_at: Option<std::time::Instant>,
    /// Buffers of frames already sent, kept for the next ones queued: a
    /// busy port does not allocate per frame.
    spare: Vec<Vec<u8>>,
}

impl Port {
    pub fn new(id: PortId, peer: Peer, mac: Option<Mac>, queue_limit: usize) -> Self {
        Port {
            id,
            peer,
            role: Role::Open,
            mac,
            rate: None,
            storm: None,
            counters: PortCounters::default(),
            queue: VecDeque::new(),
            queue_limit,
            wants_writable: false,
            stuck: false,
            progress_at: None,
            spare: Vec::new(),
        }
    }

    pub fn kind(&self) -> PortKind {
        match self.peer {
            Peer::Daemon { .. } => PortKind::Daemon,
            Peer::Bess { .. } => PortKind::Bess,
            Peer::Attached { .. } => PortKind::Attached,
        }
    }

    /// Whether the port's output queue is this full: the switch holds its
    /// input back from here (unless the port is stuck). Half the queue, and
    /// low enough that the rest takes one more received batch whole, since a
    /// batch in hand is forwarded before the switch pauses.
    pub fn congestion_mark(&self) -> usize {
        (self.queue_limit / 2)
            .min(self.queue_limit.saturating_sub(sock::RecvBatch::SIZE))
            .max(1)
    }

    pub fn is_promiscuous(&self) -> bool {
        matches!(self.peer, Peer::Attached { promiscuous: true, .. })
    }

    pub fn info(&self) -> PortInfo {
        PortInfo {
            id: self.id,
            kind: self.kind(),
            mac: self.mac,
            counters: self.counters,
            queued: self.queue.len(),
        }
    }

    pub fn count_in(&mut self, len: usize) {
        self.counters.frames_in += 1;
        self.counters.bytes_in += len as u64;
    }

    /// Sends a frame now, or queues it behind those waiting, or drops it.
    /// Never blocks.
    #[cfg(test)]
    pub fn offer(&mut self, frame: &[u8]) -> Offer {
        self.offer_many(&[frame])
    }

    /// Sends frames now, or queues them behind those waiting, or drops them;
    /// never blocks. In order, with as few system calls as the socket
    /// allows. The result is the most pressing outcome: Gone (an attached
    /// receiver), then Queued (some frame waits), then Sent, then Dropped.
    pub fn offer_many(&mut self, frames: &[&[u8]]) -> Offer {
        if let Peer::Attached { sink, .. } = &mut self.peer {
            for frame in frames {
                if !sink.frame(self.id, frame) {
                    return Offer::Gone;
                }
                self.counters.frames_out += 1;
                self.counters.bytes_out += frame.len() as u64;
            }
            return Offer::Sent;
        }
        let mut done = 0;
        let mut sent = false;
        if self.queue.is_empty() {
            while done < frames.len() {
                match self.try_send(&frames[done..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        done += n;
                        sent = true;
                    }
                    Err(_) => {
                        self.counters.drops_send_error += 1;
                        done += 1;
                    }
                }
            }
        }
        let mut queued = false;
        for frame in &frames[done..] {
            if self.queue.len() >= self.queue_limit {
                self.counters.drops_queue_full += 1;
                continue;
            }
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(frame);
            self.queue.push_back(buf);
            queued = true;
        }
        if queued {
            Offer::Queued
        } else if sent {
            Offer::Sent
        } else {
            Offer::Dropped
        }
    }

    /// Sends what the queue holds until the socket would block. Returns
    /// whether frames remain.
    pub fn flush(&mut self) -> bool {
        while !self.queue.is_empty() {
            let mut batch: [&[u8]; sock::SEND_BATCH] = [&[]; sock::SEND_BATCH];
            let mut n = 0;
            for (slot, frame) in batch.iter_mut().zip(self.queue.iter()) {
                *slot = frame;
                n += 1;
            }
            let done = match send_counted(&self.peer, &mut self.counters, &batch[..n]) {
                Ok(0) => return true,
                Ok(done) => done,
                Err(_) => {
                    self.counters.drops_send_error += 1;
                    1
                }
            };
            for _ in 0..done {
                if let Some(buf) = self.queue.pop_front() {
                    if self.spare.len() < self.queue_limit.min(sock::SEND_BATCH * 4) {
                        self.spare.push(buf);
                    }
                }
            }
        }
        false
    }

    /// Sends the first frames of `frames` (up to [`sock::SEND_BATCH`]) in one
    /// system call. Ok(n) sent n (0: would block), Err: the peer refused
    /// the first one.
    fn try_send(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        send_counted(&self.peer, &mut self.counters, frames)
    }
}

/// [`Port::try_send`] on the parts of a port it needs, so that the frames
/// may be borrowed from the port's own queue.
fn send_counted(peer: &Peer, counters: &mut PortCounters, frames: &[&[u8]]) -> io::Result<usize> {
    let fd = match peer {
        Peer::Daemon { data, .. } => data.as_raw_fd(),
        Peer::Bess { conn } => conn.as_raw_fd(),
        Peer::Attached { .. } => return Ok(frames.len()),
    };
    loop {
        match sock::send_many(fd, frames) {
            Ok(n) => {
                counters.frames_out += n as u64;
                counters.bytes_out += frames[..n].iter().map(|f| f.len() as u64).sum::<u64>();
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    struct Collect(std::sync::mpsc::Sender<Vec<u8>>, bool);
    impl FrameSink for Collect {
        fn frame(&mut self, _port: PortId, frame: &[u8]) -> bool {
            let _ = self.0.send(frame.to_vec());
            self.1
        }
    }

    #[test]
    fn attached_ports_deliver_or_report_gone() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Box::new(Collect(tx.clone(), true));
        let mut port = Port::new(
            PortId(1),
            Peer::Attached {
                sink,
                promiscuous: false,
            },
            None,
            4,
        );
        assert_eq!(port.offer(b"abc"), Offer::Sent);
        assert_eq!(rx.recv().unwrap(), b"abc");
        assert_eq!(port.counters.bytes_out, 3);
        let sink = Box::new(Collect(tx, false));
        let mut gone = Port::new(
            PortId(2),
            Peer::Attached {
                sink,
                promiscuous: true,
            },
            None,
            4,
        );
        assert!(gone.is_promiscuous());
        assert_eq!(gone.offer(b"x"), Offer::Gone);
    }

    #[test]
    fn a_full_peer_queues_then_drops_then_drains() {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let conn = OwnedFd::from(ours);
        let mut port = Port::new(PortId(1), Peer::Bess { conn }, None, 3);
        let mut queued = 0;
        let mut dropped = 0;
        for _ in 0..2000 {
            match port.offer(&[0u8; 1000]) {
                Offer::Queued => queued += 1,
                Offer::Dropped => dropped += 1,
                _ => {}
            }
        }
        assert_eq!(queued, 3);
        assert!(dropped > 0);
        assert_eq!(port.counters.drops_queue_full, dropped);
        theirs.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2000];
        while theirs.recv(&mut buf).is_ok() {}
        assert!(!port.flush());
        assert!(port.queue.is_empty());
    }
}
