//! Packet capture: the frames a switch forwards, written as they pass to a
//! pcap file (nanosecond timestamps, Ethernet) that tshark and Wireshark
//! read. A frame to an impaired link is taken as the link delivers it, so
//! the capture shows what the link did: frames late, lost, twice, out of
//! order or changed. Written on the switch's thread into a buffer (a write per 64 KiB),
//! so a capture costs forwarding a copy of each frame it takes; a capture
//! that fails to write, or reaches its size limit, stops taking frames and
//! counts the ones it missed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::TsResolution;

use super::{FrameSink, PortId};

/// The bytes a capture file may reach by default (1 GiB).
pub const MAX_BYTES: u64 = 1 << 30;
/// A record's header in a pcap file: 16 bytes before each frame.
const RECORD_HEADER: u64 = 16;
const BUFFER: usize = 64 << 10;

/// What a capture took, as [`super::Switch::stop_capture`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames written.
    pub frames: u64,
    /// Bytes of the file, its header included.
    pub bytes: u64,
    /// Frames it should have taken but did not (a write failed, or the
    /// file reached its limit).
    pub missed: u64,
}

/// Where a capture's frames go.
enum Output {
    /// A pcap file, while it can be written.
    File(Option<PcapWriter<BufWriter<File>>>),
    /// A process in this program (a sink), for as many frames as it may
    /// still take: a process's mailbox is not to grow without end.
    Sink(Box<dyn FrameSink>),
}

pub struct Capture {
    /// The port whose frames it takes, in and out; None: every frame.
    pub target: Option<PortId>,
    output: Output,
    /// Bytes (file) or frames (sink) it may take in all.
    limit: u64,
    stats: CaptureStats,
}

impl Capture {
    /// Creates `path` (it must not exist: a capture never overwrites a
    /// file) and writes the pcap header.
    pub fn create(path: &Path, target: Option<PortId>, max_bytes: u64) -> io::Result<Capture> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let header = PcapHeader {
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let writer =
            PcapWriter::with_header(BufWriter::with_capacity(BUFFER, file), header).map_err(io::Error::other)?;
        Ok(Capture {
            target,
            output: Output::File(Some(writer)),
            limit: max_bytes,
            stats: CaptureStats {
                bytes: 24,
                ..CaptureStats::default()
            },
        })
    }

    /// A capture whose frames go to `sink`, at most `max_frames` of them.
    pub fn to_sink(target: Option<PortId>, sink: Box<dyn FrameSink>, max_frames: u64) -> Capture {
        Capture {
            target,
            output: Output::Sink(sink),
            limit: max_frames,
            stats: CaptureStats::default(),
        }
    }

    /// Whether it takes, as it is forwarded, a frame from `src` that goes
    /// to the ports `to` at once and, if `impaired`, to impaired links too
    /// (whose copies it takes as they are released instead). A capture of
    /// everything takes a frame here unless only impaired links carry it:
    /// a frame forwarded to some ports at once and to an impaired link is
    /// in it once more as that link releases it.
    pub fn wants(&self, src: PortId, mut to: impl Iterator<Item = PortId>, impaired: bool) -> bool {
        match self.target {
            None => !impaired || to.next().is_some(),
            Some(t) => t == src || to.any(|p| p == t),
        }
    }

    /// Whether it takes a frame an impaired link releases to port `to`.
    pub fn wants_released(&self, to: PortId) -> bool {
        self.target.is_none_or(|t| t == to)
    }

    /// Takes one frame: written, stamped now, or handed to the sink.
    pub fn take(&mut self, frame: &[u8]) {
        let writer = match &mut self.output {
            Output::Sink(sink) => {
                if self.stats.frames < self.limit && sink.frame(self.target.unwrap_or(PortId(0)), frame) {
                    self.stats.frames += 1;
                    self.stats.bytes += frame.len() as u64;
                } else {
                    self.stats.missed += 1;
                }
                return;
            }
            Output::File(writer) => writer,
        };
        let size = RECORD_HEADER + frame.len() as u64;
        let room = self.stats.bytes + size <= self.limit;
        let Some(pcap) = writer.as_mut().filter(|_| room) else {
            self.stats.missed += 1;
            return;
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        match pcap.write_packet(&PcapPacket::new(now, frame.len() as u32, frame)) {
            Ok(_) => {
                self.stats.frames += 1;
                self.stats.bytes += size;
            }
            Err(e) => {
                log::warn!("evum switch: a capture stops: {e}");
                self.stats.missed += 1;
                *writer = None;
            }
        }
    }

    /// Writes what is buffered and closes the file.
    pub fn finish(mut self) -> CaptureStats {
        if let Output::File(Some(writer)) = std::mem::replace(&mut self.output, Output::File(None)) {
            let mut buffered = writer.into_writer();
            if let Err(e) = buffered.flush() {
                log::warn!("evum switch: a capture's last frames were not written: {e}");
            }
        }
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;

    fn temp(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("evum-capture-{}-{name}.pcap", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn frames_are_read_back_with_nanosecond_stamps() {
        let path = temp("read");
        let mut capture = Capture::create(&path, None, MAX_BYTES).unwrap();
        capture.take(&[1u8; 60]);
        capture.take(&[2u8; 1514]);
        let stats = capture.finish();
        assert_eq!(
            stats,
            CaptureStats {
                frames: 2,
                bytes: 24 + 16 + 60 + 16 + 1514,
                missed: 0
            }
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), stats.bytes);
        let mut reader = PcapReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.header().ts_resolution, TsResolution::NanoSecond);
        let first = reader.next_packet().unwrap().unwrap();
        assert_eq!(first.data.as_ref(), &[1u8; 60]);
        assert!(first.timestamp.as_secs() > 1_600_000_000);
        assert_eq!(reader.next_packet().unwrap().unwrap().data.len(), 1514);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_capture_counts_what_it_missed_and_an_existing_file_is_refused() {
        let path = temp("full");
        let mut capture = Capture::create(&path, Some(PortId(3)), 24 + 2 * 76).unwrap();
        for _ in 0..5 {
            capture.take(&[0u8; 60]);
        }
        assert_eq!(
            capture.finish(),
            CaptureStats {
                frames: 2,
                bytes: 24 + 2 * 76,
                missed: 3
            }
        );
        assert!(Capture::create(&path, None, MAX_BYTES).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_port_capture_takes_its_port_both_ways() {
        let path = temp("port");
        let capture = Capture::create(&path, Some(PortId(3)), MAX_BYTES).unwrap();
        assert!(capture.wants(PortId(3), [PortId(4)].into_iter(), false));
        assert!(capture.wants(PortId(1), [PortId(2), PortId(3)].into_iter(), false));
        assert!(!capture.wants(PortId(1), [PortId(2)].into_iter(), false));
        // Frames from it always; frames to it over an impaired link as
        // the link releases them.
        assert!(capture.wants(PortId(3), std::iter::empty(), true));
        assert!(!capture.wants(PortId(1), std::iter::empty(), true));
        assert!(capture.wants_released(PortId(3)));
        assert!(!capture.wants_released(PortId(2)));
        capture.finish();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_capture_of_everything_takes_impaired_frames_as_released() {
        let path = temp("all");
        let capture = Capture::create(&path, None, MAX_BYTES).unwrap();
        assert!(capture.wants(PortId(1), std::iter::empty(), false));
        assert!(capture.wants(PortId(1), [PortId(2)].into_iter(), true));
        assert!(!capture.wants(PortId(1), std::iter::empty(), true));
        assert!(capture.wants_released(PortId(2)));
        capture.finish();
        std::fs::remove_file(&path).unwrap();
    }
}
