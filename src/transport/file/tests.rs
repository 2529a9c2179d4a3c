use super::*;

fn wire() -> Wire {
    Wire {
        name: "Bytes",
        encoding: 2,
        fingerprint: 0x1234,
        max_frame: 1 << 20,
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "shmbus-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn payload(i: u64) -> Vec<u8> {
    let n = (i * 37 % 300) as usize;
    (0..n).map(|k| (k as u64 ^ i) as u8).collect()
}

fn opts(io: FileIo, segment_size: u64) -> LogOptions {
    LogOptions {
        io,
        segment_size,
        ..LogOptions::default()
    }
}

fn read_all(r: &mut LogReader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(_t) = r.try_next(&mut buf).unwrap() {
        out.push(buf.clone());
    }
    out
}

#[test]
fn round_trip_roll_over_and_start_positions() {
    for io in [FileIo::Mmap, FileIo::ReadWrite] {
        let d = TempDir::new("rt");
        let o = opts(io, 4096);
        let mut w = LogWriter::open(&d.0, &wire(), true, &Access::default(), &o).unwrap();
        for i in 0..500 {
            assert_eq!(w.append(&payload(i), i).unwrap(), i);
        }
        assert!(segments(&d.0).unwrap().len() > 10, "rolled over");
        let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o).unwrap();
        let all = read_all(&mut r);
        assert_eq!(all.len(), 500);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(*p, payload(i as u64));
        }
        let mut o2 = o.clone();
        o2.start = Start::Sequence(321);
        let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o2).unwrap();
        assert_eq!(read_all(&mut r)[0], payload(321));
        o2.start = Start::End;
        let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o2).unwrap();
        assert!(read_all(&mut r).is_empty());
        w.append(b"live", 0).unwrap();
        assert_eq!(read_all(&mut r), vec![b"live".to_vec()]);
        // The other access mode reads the same log.
        let other = if io == FileIo::Mmap {
            FileIo::ReadWrite
        } else {
            FileIo::Mmap
        };
        let mut r = LogReader::open(
            &d.0,
            Some(&wire()),
            false,
            &Access::default(),
            &opts(other, 4096),
        )
        .unwrap();
        assert_eq!(read_all(&mut r).len(), 501);
    }
}

#[test]
fn type_mismatch_and_second_writer_are_refused() {
    let d = TempDir::new("tm");
    let o = LogOptions::default();
    let _w = LogWriter::open(&d.0, &wire(), true, &Access::default(), &o).unwrap();
    let mut other = wire();
    other.fingerprint = 99;
    assert!(matches!(
        LogReader::open(&d.0, Some(&other), true, &Access::default(), &o),
        Err(LinkOpenError::TypeMismatch(_))
    ));
    assert!(matches!(
        LogWriter::open(&d.0, &wire(), true, &Access::default(), &o),
        Err(LinkOpenError::Refused(_))
    ));
}

#[test]
fn cursor_resumes_and_holds_back_retention() {
    let d = TempDir::new("cur");
    let mut o = opts(FileIo::Mmap, 4096);
    o.retention = Some(8192);
    o.cursor = Some("slow".into());
    let mut w = LogWriter::open(&d.0, &wire(), true, &Access::default(), &o).unwrap();
    {
        let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o).unwrap();
        for i in 0..10 {
            w.append(&payload(i), 0).unwrap();
        }
        let mut buf = Vec::new();
        for i in 0..3 {
            r.try_next(&mut buf).unwrap().unwrap();
            assert_eq!(buf, payload(i));
        }
    }
    for i in 10..400 {
        w.append(&payload(i), 0).unwrap();
    }
    // The cursor at 3 keeps segment 0; a reader without a cursor still sees record 0.
    assert_eq!(segments(&d.0).unwrap()[0], 0);
    let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o).unwrap();
    let rest = read_all(&mut r);
    assert_eq!(rest.len(), 397);
    assert_eq!(rest[0], payload(3));
    // Once the cursor passed everything, retention deletes old segments.
    for i in 400..500 {
        w.append(&payload(i), 0).unwrap();
    }
    let segs = segments(&d.0).unwrap();
    assert!(segs[0] > 0, "old segments deleted: {segs:?}");
    // ... but none holding records at or after the cursor (400).
    assert!(segs[0] <= 400, "{segs:?}");
    // A reader without a cursor skips to the oldest kept record.
    let mut o2 = opts(FileIo::Mmap, 4096);
    o2.start = Start::Beginning;
    let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o2).unwrap();
    let mut buf = Vec::new();
    r.try_next(&mut buf).unwrap().unwrap();
    assert_eq!(buf, payload(segs[0]));
}

#[test]
fn torn_tail_is_never_delivered_and_is_repaired() {
    for io in [FileIo::Mmap, FileIo::ReadWrite] {
        let d = TempDir::new("torn");
        let o = opts(io, 1 << 20);
        let mut w = LogWriter::open(&d.0, &wire(), true, &Access::default(), &o).unwrap();
        for i in 0..5 {
            w.append(&payload(i), 0).unwrap();
        }
        let end = w.off;
        drop(w);
        // A writer died half-way through record 5: its header and part of its payload.
        let mut rec = Vec::new();
        encode_record(&mut rec, 5, 0, &payload(5));
        let f = open_rw(&seg_path(&d.0, 0)).unwrap();
        f.write_all_at(&rec[..rec.len() / 2], end).unwrap();
        let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o).unwrap();
        assert_eq!(read_all(&mut r).len(), 5);
        let mut buf = Vec::new();
        assert!(matches!(
            r.next(&mut buf, Wait::No),
            Err(LinkError::Disconnected)
        ));
        // The next writer continues at 5, over the torn bytes.
        let mut w = LogWriter::open(&d.0, &wire(), true, &Access::default(), &o).unwrap();
        assert_eq!(w.append(b"again", 0).unwrap(), 5);
        assert_eq!(read_all(&mut r), vec![b"again".to_vec()]);
        // A flipped bit in an old record is detected as damage, not delivered.
        drop(w);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, SEG_HEADER + 30).unwrap();
        f.write_all_at(&[b[0] ^ 1], SEG_HEADER + 30).unwrap();
        let mut r = LogReader::open(&d.0, Some(&wire()), false, &Access::default(), &o).unwrap();
        assert_eq!(r.try_next(&mut buf).unwrap(), Some(0));
        assert!(buf.is_empty(), "record 0 is intact (empty payload)");
        assert!(matches!(r.try_next(&mut buf), Err(LinkError::Corrupt(_))));
    }
}
