//! A switch port: where its frames go, its bounded output queue, its counters.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::daemon::RawUnixAddr;
use super::fdb::Mac;
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
}

/// How frames reach the port's peer.
pub enum Peer {
    /// A UML daemon-transport VM: its control stream (kept open: EOF means
    /// the VM is gone) and a datagram socket connected to its address.
    Daemon {
        control: std::os::unix::net::UnixStream,
        out: OwnedFd,
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

pub struct Port {
    pub id: PortId,
    pub peer: Peer,
    /// The given MAC (attached ports) or the last one learned from it.
    pub mac: Option<Mac>,
    pub counters: PortCounters,
    pub queue: VecDeque<Vec<u8>>,
    pub queue_limit: usize,
    pub wants_writable: bool,
}

impl Port {
    pub fn new(id: PortId, peer: Peer, mac: Option<Mac>, queue_limit: usize) -> Self {
        Port {
            id,
            peer,
            mac,
            counters: PortCounters::default(),
            queue: VecDeque::new(),
            queue_limit,
            wants_writable: false,
        }
    }

    pub fn kind(&self) -> PortKind {
        match self.peer {
            Peer::Daemon { .. } => PortKind::Daemon,
            Peer::Bess { .. } => PortKind::Bess,
            Peer::Attached { .. } => PortKind::Attached,
        }
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
    pub fn offer(&mut self, frame: &[u8]) -> Offer {
        if let Peer::Attached { sink, .. } = &mut self.peer {
            if !sink.frame(self.id, frame) {
                return Offer::Gone;
            }
            self.counters.frames_out += 1;
            self.counters.bytes_out += frame.len() as u64;
            return Offer::Sent;
        }
        if self.queue.is_empty() {
            match self.try_send(frame) {
                Ok(true) => return Offer::Sent,
                Ok(false) => {}
                Err(_) => {
                    self.counters.drops_send_error += 1;
                    return Offer::Dropped;
                }
            }
        }
        if self.queue.len() >= self.queue_limit {
            self.counters.drops_queue_full += 1;
            return Offer::Dropped;
        }
        self.queue.push_back(frame.to_vec());
        Offer::Queued
    }

    /// Sends what the queue holds until the socket would block. Returns
    /// whether frames remain.
    pub fn flush(&mut self) -> bool {
        while let Some(frame) = self.queue.pop_front() {
            match self.try_send(&frame) {
                Ok(true) => {}
                Ok(false) => {
                    self.queue.push_front(frame);
                    return true;
                }
                Err(_) => self.counters.drops_send_error += 1,
            }
        }
        false
    }

    /// Ok(true) sent, Ok(false) would block, Err: the peer refused it.
    fn try_send(&mut self, frame: &[u8]) -> io::Result<bool> {
        let fd = match &self.peer {
            Peer::Daemon { out, .. } => out.as_raw_fd(),
            Peer::Bess { conn } => conn.as_raw_fd(),
            Peer::Attached { .. } => return Ok(true),
        };
        loop {
            match sock::send(fd, frame) {
                Ok(_) => {
                    self.counters.frames_out += 1;
                    self.counters.bytes_out += frame.len() as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
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
