//! Splitting an instance's output into lines for the echo with a bounded
//! buffer: a line longer than the limit is cut there, and the rest of it,
//! up to the next newline, is dropped.

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
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let (piece, ends) = match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let piece = &data[..nl];
                    data = &data[nl + 1..];
                    (piece, true)
                }
                None => (std::mem::take(&mut data), false),
            };
            if self.discarding {
                self.discarding = !ends;
                continue;
            }
            let room = self.max - self.partial.len();
            if piece.len() > room {
                if self.partial.is_empty() {
                    emit(&piece[..room], true);
                } else {
                    self.partial.extend_from_slice(&piece[..room]);
                    emit(&self.partial, true);
                    self.partial.clear();
                }
                self.discarding = !ends;
            } else if ends {
                if self.partial.is_empty() {
                    emit(piece, false);
                } else {
                    self.partial.extend_from_slice(piece);
                    emit(&self.partial, false);
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
