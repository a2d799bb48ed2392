//! Splitting an instance's output into lines (for the echo, followers and
//! history) with a bounded buffer: a line longer than the limit is cut
//! there, and the rest of it, up to the next newline, is dropped.

/// A line as GetLogs sends it: invalid UTF-8 replaced, without a trailing
/// `\r`, and saying so when it was cut at `max` bytes.
pub fn text(line: &[u8], cut: bool, max: usize) -> String {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    if cut {
        format!("{line} [line cut at {max} bytes]")
    } else {
        line.to_string()
    }
}

/// Lines of a byte stream fed in pieces; holds at most one partial line
/// of at most `max` bytes.
#[derive(Debug)]
pub struct LineCutter {
    max: usize,
    partial: Vec<u8>,
    /// Dropping everything up to the next newline (after a cut).
    discarding: bool,
}

impl LineCutter {
    /// Lines are cut after `max` bytes.
    pub fn new(max: usize) -> LineCutter {
        LineCutter {
            max: max.max(1),
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// Hands every line `data` completes to `emit`, without its newline, and
    /// with `true` when it was cut. Keeps the unfinished end for the next
    /// call.
    pub fn feed(&mut self, data: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        self.feed_at(data, |line, cut, _| emit(line, cut));
    }

    /// [`LineCutter::feed`], also handing `emit` how many bytes of `data`
    /// the line took up to its end: past its newline, or up to the cut.
    pub fn feed_at(&mut self, data: &[u8], mut emit: impl FnMut(&[u8], bool, usize)) {
        let total = data.len();
        let mut data = data;
        while !data.is_empty() {
            let at = total - data.len();
            let (piece, ends) = match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let piece = &data[..nl];
                    data = &data[nl + 1..];
                    (piece, true)
                }
                None => (std::mem::take(&mut data), false),
            };
            let end = total - data.len();
            if self.discarding {
                self.discarding = !ends;
                continue;
            }
            let room = self.max - self.partial.len();
            if piece.len() > room {
                if self.partial.is_empty() {
                    emit(&piece[..room], true, at + room);
                } else {
                    self.partial.extend_from_slice(&piece[..room]);
                    emit(&self.partial, true, at + room);
                    self.partial.clear();
                }
                self.discarding = !ends;
            } else if ends {
                if self.partial.is_empty() {
                    emit(piece, false, end);
                } else {
                    self.partial.extend_from_slice(piece);
                    emit(&self.partial, false, end);
                    self.partial.clear();
                }
            } else {
                if self.partial.capacity() == 0 {
                    // Never more than `max`: no doubling past it.
                    self.partial.reserve_exact(self.max);
                }
                self.partial.extend_from_slice(piece);
            }
        }
    }

    /// The output ends without a last newline: hands the unfinished line,
    /// if any, to `emit` (as [`LineCutter::feed`] would have), and forgets
    /// it.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(&self.partial, false);
        }
        self.restart();
    }

    /// The output starts over (a new file, or output skipped): forgets the
    /// unfinished line and any cut. Returns the bytes forgotten.
    pub fn restart(&mut self) -> usize {
        let n = self.partial.len();
        self.partial = Vec::new();
        self.discarding = false;
        n
    }

    /// Gives the buffer's memory back when no line is unfinished.
    pub fn shrink(&mut self) {
        if self.partial.is_empty() {
            self.partial = Vec::new();
        }
    }

    /// Bytes held for an unfinished line.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.partial.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(c: &mut LineCutter, pieces: &[&[u8]]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for p in pieces {
            c.feed(p, |l, cut| {
                out.push((String::from_utf8_lossy(l).into_owned(), cut));
            });
        }
        out
    }

    fn whole(s: &str) -> (String, bool) {
        (s.to_string(), false)
    }

    #[test]
    fn lines_split_across_pieces_come_out_whole() {
        let mut c = LineCutter::new(16);
        let out = run(&mut c, &[b"ab", b"c\nde", b"f\n\ng", b"h\n"]);
        assert_eq!(
            out,
            vec![whole("abc"), whole("def"), whole(""), whole("gh")]
        );
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_and_its_rest_dropped() {
        let mut c = LineCutter::new(4);
        let out = run(&mut c, &[b"abcdefgh", b"ijk", b"lm\nnext\n"]);
        assert_eq!(out, vec![("abcd".into(), true), whole("next")]);
        let out = run(&mut c, &[b"ab", b"cdefg\nxy\n"]);
        assert_eq!(out, vec![("abcd".into(), true), whole("xy")]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_not_cut() {
        let mut c = LineCutter::new(4);
        let out = run(&mut c, &[b"ab", b"cd", b"\nabcd\n"]);
        assert_eq!(out, vec![whole("abcd"), whole("abcd")]);
    }

    #[test]
    fn an_endless_line_holds_no_more_than_the_limit() {
        let mut c = LineCutter::new(1024);
        let chunk = vec![b'x'; 64 << 10];
        let mut lines = 0;
        for _ in 0..100 {
            c.feed(&chunk, |l, cut| {
                assert!(cut && l.len() == 1024);
                lines += 1;
            });
            assert!(c.held() <= 1024, "holds {}", c.held());
        }
        assert_eq!(lines, 1);
        let out = run(&mut c, &[b"tail\nok\n"]);
        assert_eq!(out, vec![whole("ok")]);
        c.shrink();
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn each_line_says_where_it_ends_in_the_piece() {
        let mut c = LineCutter::new(4);
        let mut ends = Vec::new();
        for p in [&b"ab\ncd"[..], b"e\nabcdefg\nz\n"] {
            c.feed_at(p, |l, cut, at| {
                ends.push((String::from_utf8_lossy(l).into_owned(), cut, at))
            });
        }
        assert_eq!(
            ends,
            vec![
                ("ab".into(), false, 3),
                ("cde".into(), false, 2),
                ("abcd".into(), true, 6),
                ("z".into(), false, 12),
            ]
        );
    }

    #[test]
    fn a_flush_hands_over_the_unfinished_line_once() {
        let mut c = LineCutter::new(4);
        assert_eq!(run(&mut c, &[b"a\nbc"]), vec![whole("a")]);
        let mut out = Vec::new();
        c.flush(|l, cut| out.push((String::from_utf8_lossy(l).into_owned(), cut)));
        c.flush(|l, cut| out.push((String::from_utf8_lossy(l).into_owned(), cut)));
        assert_eq!(out, vec![whole("bc")]);
        // After a cut, the rest of the line is not a line of its own.
        assert_eq!(run(&mut c, &[b"abcdef"]), vec![("abcd".into(), true)]);
        c.flush(|_, _| panic!("nothing is unfinished"));
    }

    #[test]
    fn a_restart_forgets_the_unfinished_line_and_the_cut() {
        let mut c = LineCutter::new(4);
        assert!(run(&mut c, &[b"un"]).is_empty());
        assert_eq!(c.restart(), 2);
        assert_eq!(run(&mut c, &[b"new\n"]), vec![whole("new")]);
        assert_eq!(run(&mut c, &[b"toolong"]), vec![("tool".into(), true)]);
        assert_eq!(c.restart(), 0);
        assert_eq!(run(&mut c, &[b"ok\n"]), vec![whole("ok")]);
    }
}
