//! Output of `get-impacted-targets`: plain labels (spec 5.3) or labels with distances (5.4).
//! Both writers keep the order they are given; ordering is the caller's job.

use std::io::{self, BufWriter, Write};

use crate::contract::{LABEL_KEY, PACKAGE_DISTANCE_KEY, TARGET_DISTANCE_KEY};
use crate::gson::Pretty;

/// One entry of the impacted-targets JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImpactedTarget {
    pub label: String,
    /// Dependency hops to the nearest directly changed target.
    pub target_distance: u32,
    /// Package boundaries crossed on the way to a directly changed target.
    pub package_distance: u32,
}

/// Writes one label per line, each followed by `\n`; nothing at all for an empty list.
pub fn write_impacted_labels<W: Write, S: AsRef<str>>(out: W, labels: &[S]) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    for label in labels {
        out.write_all(label.as_ref().as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes the JSON array `[{"label", "targetDistance", "packageDistance"}, ...]` in Gson's
/// pretty layout (`[]` when empty, no trailing newline).
pub fn write_impacted_distances<W: Write>(out: W, targets: &[ImpactedTarget]) -> io::Result<()> {
    let mut w = Pretty::new(out);
    w.begin_array()?;
    for target in targets {
        w.begin_object()?;
        w.name(LABEL_KEY)?;
        w.string(&target.label)?;
        w.name(TARGET_DISTANCE_KEY)?;
        w.number(target.target_distance.into())?;
        w.name(PACKAGE_DISTANCE_KEY)?;
        w.number(target.package_distance.into())?;
        w.end_object()?;
    }
    w.end_array()?;
    w.finish().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(labels: &[&str]) -> String {
        let mut out = Vec::new();
        write_impacted_labels(&mut out, labels).expect("vec write");
        String::from_utf8(out).expect("utf8")
    }

    fn json(targets: &[ImpactedTarget]) -> String {
        let mut out = Vec::new();
        write_impacted_distances(&mut out, targets).expect("vec write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn labels_one_per_line() {
        assert_eq!(text(&[]), "");
        assert_eq!(text(&["//a:b", "//c:d"]), "//a:b\n//c:d\n");
    }

    #[test]
    fn distances_in_gson_layout() {
        assert_eq!(json(&[]), "[]");
        let targets = [
            ImpactedTarget {
                label: "//A:one".into(),
                target_distance: 0,
                package_distance: 0,
            },
            ImpactedTarget {
                label: "//:lib".into(),
                target_distance: 5,
                package_distance: 1,
            },
        ];
        let expected = r#"[
  {
    "label": "//A:one",
    "targetDistance": 0,
    "packageDistance": 0
  },
  {
    "label": "//:lib",
    "targetDistance": 5,
    "packageDistance": 1
  }
]"#;
        assert_eq!(json(&targets), expected);
    }
}
