//! The plain-text tables of the reports: each column padded to its widest
//! cell, the first (what is measured) and the last (the goal, or a note)
//! left-aligned, the figures between right-aligned.
use std::fmt::Write;

/// The rows as lines, trailing blanks trimmed.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(width).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = if i == 0 || i == N - 1 {
                write!(line, "{c:<w$}")
            } else {
                write!(line, "{c:>w$}")
            };
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `n` with thousands separated: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_and_aligns_figures_right() {
        let rows = [
            ["".to_string(), "A".into(), "goal".into()],
            ["metric".to_string(), "12.5".into(), "".into()],
            ["m".to_string(), "3".into(), ">= 1: met".into()],
        ];
        assert_eq!(
            render(&rows),
            "           A  goal\nmetric  12.5\nm          3  >= 1: met\n"
        );
    }

    #[test]
    fn separates_thousands() {
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
