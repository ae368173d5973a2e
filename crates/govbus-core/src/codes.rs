//! Administrative codes cleaned at the edge (a dataset's `[[codes]]`): what
//! a code given with the date of its change becomes, as the rule says. A
//! pure core over [`AdminMap`]; the producer applies the verdict.

use chrono::NaiveDate;

use crate::admin_map::{AdminMap, Resolved, Version};
use crate::catalog::{CodeAction, CodeRule};

/// What becomes of one code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted as sent.
    Keep,
    /// Replaced by the code valid on the change's date (the one sent is
    /// kept in the rule's `as_sent` field).
    Normalise {
        /// The code to store.
        to: String,
        /// Its unit's name.
        name: String,
    },
    /// Refused, with the reason the sender is told.
    Refuse(String),
}

fn unit(v: &Version) -> String {
    format!("{} ({})", v.code, v.name)
}

/// What `code`, in a change of `day`, becomes under `rule`; `within` is the
/// unit it must lie in (the value of the rule's `within` field, already
/// cleaned), if any.
pub fn judge(
    map: &AdminMap,
    rule: &CodeRule,
    code: &str,
    day: NaiveDate,
    within: Option<&str>,
) -> Verdict {
    let refuse_or_keep = |action: CodeAction, why: String| match action {
        CodeAction::Refuse => Verdict::Refuse(why),
        CodeAction::Keep | CodeAction::Normalise => Verdict::Keep,
    };
    let (now, verdict) = match map.resolve(code, day) {
        Resolved::Valid(v) => (v, Verdict::Keep),
        Resolved::Succeeded { retired, now } => {
            let why = format!(
                "code {} was retired on {} and merged whole into {}; send the code valid on {day}",
                unit(retired),
                fmt_day(retired.valid_to),
                unit(now)
            );
            match rule.merged {
                CodeAction::Normalise => (
                    now,
                    Verdict::Normalise {
                        to: now.code.clone(),
                        name: now.name.clone(),
                    },
                ),
                CodeAction::Refuse => return Verdict::Refuse(why),
                CodeAction::Keep => return Verdict::Keep,
            }
        }
        Resolved::Split {
            retired,
            candidates,
        } => {
            let names: Vec<String> = candidates.iter().map(|v| unit(v)).collect();
            return refuse_or_keep(
                rule.split,
                format!(
                    "code {} was retired on {} and merged in part into {} units: {}; which one cannot be told from the code",
                    unit(retired),
                    fmt_day(retired.valid_to),
                    names.len(),
                    names.join(", ")
                ),
            );
        }
        Resolved::Retired(v) => {
            return refuse_or_keep(
                rule.unknown,
                format!(
                    "code {} was retired on {} with no successor",
                    unit(v),
                    fmt_day(v.valid_to)
                ),
            )
        }
        Resolved::NotYet(v) => {
            return refuse_or_keep(
                rule.unknown,
                format!(
                    "code {} is valid only from {}, not on {day}",
                    unit(v),
                    v.valid_from
                ),
            )
        }
        Resolved::Unknown => {
            return refuse_or_keep(
                rule.unknown,
                format!("code {code} is not a unit of the administrative map"),
            )
        }
    };
    if let Some(level) = rule.level.as_deref() {
        if now.level.as_str() != level {
            return Verdict::Refuse(format!(
                "code {} is a {} on {day}, not a {level}",
                unit(now),
                now.level.as_str()
            ));
        }
    }
    if let Some(w) = within {
        if !map.in_unit(&now.code, w, day) {
            let actual = map
                .province_of(&now.code, day)
                .map_or_else(|| "no province".to_string(), unit);
            return Verdict::Refuse(format!(
                "code {} lies in {actual} on {day}, not in {w}",
                unit(now)
            ));
        }
    }
    verdict
}

fn fmt_day(d: Option<NaiveDate>) -> String {
    d.map_or_else(|| "an unknown day".into(), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin_map::reform_day;

    fn map() -> AdminMap {
        AdminMap::from_reference(
            include_str!("../../../data/vn-admin-units/conversion-2025-07-01.csv"),
            include_str!("../../../data/vn-admin-units/communes-before-2025-07-01.csv"),
        )
        .unwrap()
        .0
    }

    fn rule(level: &str) -> CodeRule {
        CodeRule {
            field: "x".into(),
            catalog: "admin_units".into(),
            date: None,
            level: Some(level.into()),
            within: None,
            as_sent: None,
            merged: CodeAction::Normalise,
            split: CodeAction::Refuse,
            unknown: CodeAction::Refuse,
        }
    }

    /// A commune of `province` (any, for "") before the reform that went `whole` (or in
    /// part) into new units.
    fn old_commune(m: &AdminMap, province: &str, whole: bool) -> String {
        let before: NaiveDate = "2024-01-01".parse().unwrap();
        m.iter()
            .find(|(c, vs)| {
                vs.len() == 1
                    && m.province_of(c, before)
                        .is_some_and(|p| province.is_empty() || p.code == province)
                    && vs[0].level == crate::admin_map::Level::Commune
                    && match vs[0].successors.as_slice() {
                        [one] => whole && one.whole,
                        [] => false,
                        _ => !whole,
                    }
            })
            .map(|(c, _)| c.to_string())
            .expect("such a commune")
    }

    #[test]
    fn a_code_merged_whole_is_normalised_after_the_reform_and_kept_before() {
        let m = map();
        let after: NaiveDate = "2026-01-01".parse().unwrap();
        let c = old_commune(&m, "94", true);
        let Verdict::Normalise { to, .. } = judge(&m, &rule("COMMUNE"), &c, after, Some("92"))
        else {
            panic!("{c} is normalised");
        };
        assert!(m.in_unit(&to, "92", after), "{to}");
        // Its province, 94, is normalised to 92.
        assert!(matches!(
            judge(&m, &rule("PROVINCE"), "94", after, None),
            Verdict::Normalise { ref to, .. } if to == "92"
        ));
        // Dated before the reform, the code keeps its then-valid meaning.
        let before = reform_day().pred_opt().unwrap();
        assert_eq!(
            judge(&m, &rule("COMMUNE"), &c, before, Some("94")),
            Verdict::Keep
        );
        assert_eq!(
            judge(&m, &rule("PROVINCE"), "94", before, None),
            Verdict::Keep
        );
        // A rule that refuses merged codes says what to send instead.
        let strict = CodeRule {
            merged: CodeAction::Refuse,
            ..rule("PROVINCE")
        };
        let Verdict::Refuse(why) = judge(&m, &strict, "94", after, None) else {
            panic!("refused");
        };
        assert!(why.contains("merged whole into 92"), "{why}");
    }

    #[test]
    fn a_code_merged_in_part_is_refused_naming_the_candidates() {
        let m = map();
        let after: NaiveDate = "2026-01-01".parse().unwrap();
        let c = old_commune(&m, "", false);
        let Verdict::Refuse(why) = judge(&m, &rule("COMMUNE"), &c, after, None) else {
            panic!("{c} is refused");
        };
        let Resolved::Split { candidates, .. } = m.resolve(&c, after) else {
            panic!("split");
        };
        assert!(candidates.len() > 1);
        for v in candidates {
            assert!(why.contains(&v.code), "{why} names {}", v.code);
        }
        let lenient = CodeRule {
            split: CodeAction::Keep,
            ..rule("COMMUNE")
        };
        assert_eq!(judge(&m, &lenient, &c, after, None), Verdict::Keep);
    }

    #[test]
    fn unknown_codes_wrong_levels_and_wrong_provinces_are_refused() {
        let m = map();
        let after: NaiveDate = "2026-01-01".parse().unwrap();
        let why = |v: Verdict| match v {
            Verdict::Refuse(w) => w,
            other => panic!("refused, not {other:?}"),
        };
        assert!(why(judge(&m, &rule("COMMUNE"), "99999", after, None))
            .contains("not a unit of the administrative map"));
        assert!(why(judge(&m, &rule("COMMUNE"), "92", after, None)).contains("not a COMMUNE"));
        let c = old_commune(&m, "94", true);
        let Verdict::Normalise { to, .. } = judge(&m, &rule("COMMUNE"), &c, after, None) else {
            panic!("normalised");
        };
        assert!(why(judge(&m, &rule("COMMUNE"), &to, after, Some("52"))).contains("not in 52"));
    }
}
