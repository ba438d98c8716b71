//! Plain-text tables and human-readable numbers, shared by every command.
//!
//! One renderer for every table the CLI prints: column widths come from the
//! content, cells are left-aligned, columns are two spaces apart, and no line
//! ends in whitespace. A table without a header renders `key: value` blocks
//! the same way.

use std::fmt::Write as _;

/// A table being built row by row.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Row>,
}

#[derive(Debug)]
enum Row {
    Cells(Vec<String>),
    /// A free-text line under the previous row, starting at the second column.
    Note(String),
}

impl Table {
    /// A table with a header row.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: Some(header.iter().map(|h| (*h).to_owned()).collect()),
            rows: Vec::new(),
        }
    }

    /// A table without a header (aligned `key: value` lines).
    pub(crate) fn plain() -> Self {
        Self::default()
    }

    /// Appends a row.
    pub(crate) fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(Row::Cells(
            cells.into_iter().map(|c| clean(c.into())).collect(),
        ));
        self
    }

    /// Appends a line of free text under the last row, indented to the second
    /// column; it does not widen any column.
    pub(crate) fn note(&mut self, text: impl Into<String>) -> &mut Self {
        self.rows.push(Row::Note(clean(text.into())));
        self
    }

    /// Whether the table has no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders every line, each prefixed by `indent` and ending in `\n`.
    pub(crate) fn render(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = Vec::new();
        let all_cells = self
            .header
            .iter()
            .chain(self.rows.iter().filter_map(|r| match r {
                Row::Cells(cells) => Some(cells),
                Row::Note(_) => None,
            }));
        for cells in all_cells {
            for (i, cell) in cells.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(max) => *max = (*max).max(w),
                    None => widths.push(w),
                }
            }
        }
        let note_indent = widths.first().map_or(0, |w| w + 2);
        let mut out = String::new();
        let mut line = String::new();
        let lines = self
            .header
            .iter()
            .map(Line::Cells)
            .chain(self.rows.iter().map(|r| match r {
                Row::Cells(cells) => Line::Cells(cells),
                Row::Note(text) => Line::Note(text),
            }));
        for l in lines {
            line.clear();
            line.push_str(indent);
            match l {
                Line::Cells(cells) => {
                    for (i, cell) in cells.iter().enumerate() {
                        if i > 0 {
                            line.push_str("  ");
                        }
                        line.push_str(cell);
                        let pad = widths[i].saturating_sub(cell.chars().count());
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                Line::Note(text) => {
                    line.extend(std::iter::repeat_n(' ', note_indent));
                    line.push_str(text);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

enum Line<'a> {
    Cells(&'a Vec<String>),
    Note(&'a str),
}

/// Control characters (newlines in an error text) would break the layout.
fn clean(s: String) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        s
    }
}

/// A duration in milliseconds for people: `850ms`, `3.2s`, `4m10s`, `2h5m`, `3d4h`.
pub(crate) fn human_ms(ms: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1_000.0);
    }
    let s = ms / 1_000;
    if s < HOUR {
        format!("{}m{}s", s / MIN, s % MIN)
    } else if s < DAY {
        format!("{}h{}m", s / HOUR, s % HOUR / MIN)
    } else {
        format!("{}d{}h", s / DAY, s % DAY / HOUR)
    }
}

/// A duration in microseconds for people: `850µs`, `3.2ms`, then as [`human_ms`].
pub(crate) fn human_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        human_ms(us / 1_000)
    }
}

/// A byte count for people: `512B`, `1.2KiB`, `3.4MiB`, ...
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `entries` as a percentage of `capacity` (`0.3%`), or `-` without a capacity.
pub(crate) fn percent(entries: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", entries as f64 * 100.0 / capacity as f64)
}

/// An optional value, `-` when absent.
pub(crate) fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// A tag: `base` for none (the untagged lane).
pub(crate) fn lane(tag: Option<&str>) -> String {
    tag.unwrap_or("base").to_owned()
}

/// A list joined with `, `, or `-` when empty.
pub(crate) fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

/// `yes` / `no`.
pub(crate) fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_trailing_whitespace() {
        let mut t = Table::new(&["NAME", "TAG", "IPS"]);
        t.row(["client", "joint1", ""]);
        t.row(["a", "base", "10.0.0.1"]);
        t.note("fix: something");
        let text = t.render("  ");
        assert_eq!(
            text,
            "  NAME    TAG     IPS\n  client  joint1\n  a       base    10.0.0.1\n          fix: something\n"
        );
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn plain_tables_and_control_characters() {
        let mut t = Table::plain();
        t.row(["version:", "0.1.0"])
            .row(["connections:", "two\nlines"]);
        assert_eq!(
            t.render(""),
            "version:      0.1.0\nconnections:  two lines\n"
        );
        assert!(Table::plain().is_empty());
        assert_eq!(Table::new(&["A", "B"]).render(""), "A  B\n");
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(3_200), "3.2s");
        assert_eq!(human_ms(250_000), "4m10s");
        assert_eq!(human_ms(7_500_000), "2h5m");
        assert_eq!(human_ms(273_600_000), "3d4h");
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(3_250), "3.2ms");
        assert_eq!(human_us(1_500_000), "1.5s");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1_229), "1.2KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0MiB");
        assert_eq!(percent(3, 1024), "0.3%");
        assert_eq!(percent(3, 0), "-");
    }
}
