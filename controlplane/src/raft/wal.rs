//! The write-ahead log that holds Raft entries on disk: append-only segment
//! files of checksummed records, made durable by `fdatasync` on one thread
//! that acknowledges every append it covered (group commit).
//!
//! Layout: `DIR/FIRST_INDEX.wal`, 20-digit first index; a segment is
//! closed once it passes the segment size ([`DEFAULT_SEGMENT_BYTES`] unless
//! configured; a record is never split). A record is
//! `len: u32 | crc32(index ‖ payload): u32 | index: u64 | payload`, all
//! little-endian. Indexes are consecutive within a segment and increase
//! from one segment to the next (a jump follows a snapshot install).
//!
//! Recovery reads every segment in order. A torn or corrupt record at the
//! end of the last segment (a crash in the middle of a write that was never
//! acknowledged) is cut off; anywhere else it is an error, since
//! acknowledged data would be lost.
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A segment is closed once it grows past this size, by default.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 16;
/// Largest record accepted on recovery; anything bigger is corruption.
const MAX_RECORD: usize = 256 << 20;

/// A record as stored: its index and payload.
pub type Record = (u64, Vec<u8>);

/// A decoded record in a segment's bytes: index, offset, payload.
pub type RecordRef<'a> = (u64, u64, &'a [u8]);

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    /// (index, offset) of every record, in order.
    records: Vec<(u64, u64)>,
    len: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        self.records.last().map(|r| r.0)
    }
}

/// The open log. Appends go to the last segment; [`Wal::sync_target`]
/// is the file a flusher must `fdatasync` to make them durable.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    file: Option<File>,
    /// The last segment's file, shared with the flusher; swapped when a new
    /// segment starts (the old one is synced first).
    sync_target: Arc<RwLock<Option<Arc<File>>>>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn corrupt(path: &Path, offset: u64, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "Raft log segment {} is corrupt at offset {offset}: {why}; restore this node's data \
             directory from a backup or remove it and join the node again",
            path.display()
        ),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Encodes one record.
pub fn encode_record(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&index.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the records of one segment's bytes: the records, and where the
/// valid part ends (less than `data.len()` if the tail is torn or corrupt).
pub fn decode_records(data: &[u8]) -> (Vec<RecordRef<'_>>, u64) {
    let mut out = Vec::new();
    let mut off = 0usize;
    while data.len() - off >= HEADER {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(data[off + 8..off + 16].try_into().expect("8 bytes"));
        if len > MAX_RECORD || data.len() - off - HEADER < len {
            break;
        }
        let payload = &data[off + HEADER..off + HEADER + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&index.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        out.push((index, off as u64, payload));
        off += HEADER + len;
    }
    (out, off as u64)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, closing segments past
    /// `segment_bytes`, and returns every record in it.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Self, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".wal").and_then(|n| n.parse().ok()) {
                firsts.push(n);
            }
        }
        firsts.sort_unstable();
        let mut segments = Vec::new();
        let mut records = Vec::new();
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first);
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let (recs, valid) = decode_records(&data);
            let is_last = i + 1 == count;
            if valid < data.len() as u64 {
                if !is_last {
                    return Err(corrupt(&path, valid, "bad record before the last segment"));
                }
                // A torn tail: never acknowledged, cut it off.
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid)?;
                f.sync_all()?;
            }
            let mut seg = Segment {
                first,
                path: path.clone(),
                records: Vec::with_capacity(recs.len()),
                len: valid,
            };
            for (index, off, payload) in recs {
                let expected = seg.last().map(|l| l + 1).unwrap_or(first);
                if index != expected {
                    return Err(corrupt(
                        &path,
                        off,
                        &format!("index {index} where {expected} was expected"),
                    ));
                }
                if let Some((prev, _)) = records.last() {
                    if seg.records.is_empty() && index <= *prev {
                        return Err(corrupt(
                            &path,
                            off,
                            &format!("segment starts at {index}, previous ended at {prev}"),
                        ));
                    }
                }
                seg.records.push((index, off));
                records.push((index, payload.to_vec()));
            }
            segments.push(seg);
        }
        let mut wal = Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            file: None,
            sync_target: Arc::new(RwLock::new(None)),
        };
        if let Some(last) = wal.segments.last() {
            let f = OpenOptions::new().append(true).open(&last.path)?;
            wal.set_file(f)?;
        }
        Ok((wal, records))
    }

    fn set_file(&mut self, f: File) -> io::Result<()> {
        let shared = Arc::new(f.try_clone()?);
        self.file = Some(f);
        *self.sync_target.write().unwrap_or_else(|p| p.into_inner()) = Some(shared);
        Ok(())
    }

    /// The file to `fdatasync` to make every append so far durable.
    pub fn sync_target(&self) -> Arc<RwLock<Option<Arc<File>>>> {
        self.sync_target.clone()
    }

    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        // What the old segment holds must be durable before appends go
        // elsewhere: the flusher only syncs the newest file.
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        let path = segment_path(&self.dir, first);
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first,
            path,
            records: Vec::new(),
            len: 0,
        });
        self.set_file(f)
    }

    /// Appends records (consecutive indexes, following the last one) with
    /// one write; durable after the next sync of [`Wal::sync_target`].
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        let last = self.segments.last().and_then(|s| s.last());
        if let Some(last) = last.filter(|l| first <= l) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("append at {first} overlaps the log, which ends at {last}; truncate first"),
            ));
        }
        // A jump forward (after a snapshot replaced the log) starts a new
        // segment, so indexes are consecutive within every segment.
        let contiguous = last.is_none_or(|l| *first == l + 1);
        let needs_new = match self.segments.last() {
            None => true,
            Some(s) => s.len >= self.segment_bytes || !contiguous,
        };
        if needs_new {
            self.start_segment(*first)?;
        }
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.1.len() + HEADER).sum());
        let seg = self.segments.last_mut().expect("a segment");
        for (index, payload) in records {
            seg.records.push((*index, seg.len + buf.len() as u64));
            encode_record(*index, payload, &mut buf);
        }
        seg.len += buf.len() as u64;
        self.file.as_mut().expect("open segment").write_all(&buf)
    }

    /// Removes every record with index `>= from`, durably.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        while let Some(seg) = self.segments.last() {
            if seg.first < from {
                break;
            }
            std::fs::remove_file(&seg.path)?;
            self.segments.pop();
        }
        sync_dir(&self.dir)?;
        match self.segments.last_mut() {
            None => {
                self.file = None;
                *self.sync_target.write().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Some(seg) => {
                let keep = seg.records.partition_point(|(i, _)| *i < from);
                if keep < seg.records.len() {
                    seg.len = seg.records[keep].1;
                    seg.records.truncate(keep);
                }
                let f = OpenOptions::new().append(true).open(&seg.path)?;
                f.set_len(seg.len)?;
                f.sync_all()?;
                self.set_file(f)?;
            }
        }
        Ok(())
    }

    /// Deletes the segments whose records are all `<= upto`, except the
    /// last one. Records `<= upto` in the remaining segments stay on disk
    /// and are skipped by the caller on recovery.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].first <= upto + 1 {
            std::fs::remove_file(&self.segments[0].path)?;
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        (
            i,
            format!("entry {i}")
                .into_bytes()
                .repeat((i % 7 + 1) as usize),
        )
    }

    fn sync(w: &Wal) {
        w.sync_target()
            .read()
            .unwrap()
            .as_ref()
            .unwrap()
            .sync_data()
            .unwrap();
    }

    #[test]
    fn records_round_trip_and_reject_any_flipped_bit() {
        let mut buf = Vec::new();
        encode_record(42, b"hello", &mut buf);
        let (recs, valid) = decode_records(&buf);
        assert_eq!(recs, vec![(42, 0, &b"hello"[..])]);
        assert_eq!(valid, buf.len() as u64);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let (recs, _) = decode_records(&b);
            assert!(
                recs.is_empty() || recs == vec![(42, 0, &b"hello"[..])] && b == buf,
                "bit {bit} flipped went unnoticed"
            );
        }
        for cut in 0..buf.len() {
            assert!(decode_records(&buf[..cut]).0.is_empty());
        }
    }

    #[test]
    fn reopen_returns_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, recs) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert!(recs.is_empty());
        w.append(&(1..=10).map(rec).collect::<Vec<_>>()).unwrap();
        w.append(&[rec(11)]).unwrap();
        sync(&w);
        drop(w);
        let (_, recs) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(recs, (1..=11).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        w.append(&(1..=5).map(rec).collect::<Vec<_>>()).unwrap();
        sync(&w);
        drop(w);
        let path = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&path).unwrap().len();
        // Half of a sixth record, as a crash mid-write leaves it.
        let mut tail = Vec::new();
        encode_record(6, b"never acknowledged", &mut tail);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&tail[..tail.len() / 2]).unwrap();
        drop(f);
        let (mut w, recs) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        w.append(&[rec(6)]).unwrap();
        sync(&w);
        drop(w);
        let (_, recs) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(recs, (1..=6).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn corruption_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        w.append(&[rec(1), rec(2)]).unwrap();
        // Force a second segment.
        w.segments.last_mut().unwrap().len = DEFAULT_SEGMENT_BYTES;
        w.append(&[rec(3)]).unwrap();
        sync(&w);
        drop(w);
        let first = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&first).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xff;
        std::fs::write(&first, data).unwrap();
        let err = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn truncate_and_purge_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        for chunk in [1..=3u64, 4..=6, 7..=9] {
            w.append(&chunk.map(rec).collect::<Vec<_>>()).unwrap();
            w.segments.last_mut().unwrap().len = DEFAULT_SEGMENT_BYTES;
        }
        assert_eq!(w.segment_count(), 3);
        // Truncate into the middle of the second segment.
        w.truncate(5).unwrap();
        assert_eq!(w.segment_count(), 2);
        w.append(&[(5, b"new five".to_vec())]).unwrap();
        sync(&w);
        // Overlaps are refused; a jump forward starts a new segment.
        assert!(w.append(&[rec(5)]).is_err());
        w.append(&[rec(9)]).unwrap();
        assert_eq!(w.segment_count(), 3);
        w.truncate(9).unwrap();
        // Purge drops whole segments only.
        w.purge(2).unwrap();
        assert_eq!(w.segment_count(), 2);
        w.purge(3).unwrap();
        assert_eq!(w.segment_count(), 1);
        drop(w);
        let (_, recs) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(recs, vec![rec(4), (5, b"new five".to_vec())]);
        // Truncating everything leaves an empty log that accepts any start.
        let (mut w, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        w.truncate(0).unwrap();
        assert_eq!(w.segment_count(), 0);
        w.append(&[rec(100)]).unwrap();
        sync(&w);
        drop(w);
        assert_eq!(
            Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap().1,
            vec![rec(100)]
        );
    }
}
