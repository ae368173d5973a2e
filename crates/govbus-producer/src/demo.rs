//! A demo ministry: realistic resident changes across provinces, with moves
//! and deletes, and the state they lead to (so tests can compare).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use crate::publisher::ChangeRequest;

const FAMILY: &[&str] = &[
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
    "Hồ", "Ngô", "Dương", "Lý",
];
const MIDDLE: &[&str] = &["Văn", "Thị", "Hữu", "Đức", "Minh", "Ngọc", "Thanh", "Quang"];
const GIVEN: &[&str] = &[
    "An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hải", "Hiếu", "Hương", "Khoa", "Lan", "Linh",
    "Long", "Mai", "Nam", "Phong", "Phúc", "Quân", "Sơn", "Trang", "Trung", "Tuấn", "Vy", "Yến",
];
/// Ethnic groups used by the demo (none of these words occurs in a demo name).
pub const ETHNICITIES: &[&str] = &[
    "Kinh", "Tày", "Thái", "Mường", "Khmer", "Hoa", "Nùng", "Chăm", "Ê Đê", "Ba Na",
];
const STREETS: &[&str] = &[
    "Trần Hưng Đạo",
    "Lê Lợi",
    "Nguyễn Huệ",
    "Hai Bà Trưng",
    "Quang Trung",
    "Lý Thường Kiệt",
];

/// The five demo provinces: (province code, communes).
pub const PROVINCES: &[(&str, &[&str])] = &[
    ("52", &["21550", "21553", "21556", "21559"]),
    ("94", &["31507", "31510", "31513"]),
    ("01", &["00001", "00004", "00006"]),
    ("79", &["26734", "26737", "26740"]),
    ("48", &["20194", "20197"]),
];

/// Names of the demo provinces, by code.
const PROVINCE_NAMES: &[(&str, &str)] = &[
    ("52", "Bình Định"),
    ("94", "Sóc Trăng"),
    ("01", "Hà Nội"),
    ("79", "Hồ Chí Minh"),
    ("48", "Đà Nẵng"),
];
const COMMUNE_NAMES: &[&str] = &["Hòa Bình", "Tân Phú", "An Nhơn", "Phước Lộc"];

/// The demo's administrative units as `moha.admin_units` rows: the five
/// provinces and their communes (every code a demo resident uses).
pub fn admin_units() -> Vec<Json> {
    let mut out = Vec::new();
    for (code, communes) in PROVINCES {
        let name = PROVINCE_NAMES
            .iter()
            .find(|(c, _)| c == code)
            .map_or("?", |(_, n)| n);
        out.push(json!({"code": code, "name": name, "level": "PROVINCE",
                        "parent_code": null, "valid_from": "2025-07-01", "valid_to": null}));
        for (i, c) in communes.iter().enumerate() {
            out.push(
                json!({"code": c, "name": format!("Xã {}", COMMUNE_NAMES[i % COMMUNE_NAMES.len()]),
                            "level": "COMMUNE", "parent_code": code,
                            "valid_from": "2025-07-01", "valid_to": null}),
            );
        }
    }
    out
}

/// Publishes [`admin_units`] as the `moha` ministry: a publisher on
/// `store_url`, its central topic created, every unit relayed to the cluster
/// before this returns. Returns how many units. For tests, benchmarks and
/// `govbus up`, which need the catalog before residents can be accepted.
pub fn seed_admin_units(
    catalog: &govbus_core::Catalog,
    topics: &govbus_core::Topics,
    kafka: &govbus_core::KafkaConfig,
    registry: &govbus_schema::RegistryClient,
    store_url: &str,
) -> Result<usize, crate::AgentError> {
    let store = crate::open_store(store_url, "moha_outbox")?;
    let p = crate::Publisher::new(catalog, "moha", "demo", topics, kafka, registry, store)?;
    crate::ensure_topics(kafka, &p, 4)?;
    let units: Vec<ChangeRequest> = admin_units()
        .into_iter()
        .map(ChangeRequest::Upsert)
        .collect();
    let n = units.len();
    p.submit_batch("moha.admin_units", units)?;
    let relay = crate::Relay::new(kafka, p.store(), p.wakeup())?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while relay.step(&stop)? > 0 || p.store().backlog()? > 0 {
        if std::time::Instant::now() > deadline {
            return Err(crate::AgentError::Seed {
                what: "admin units",
                secs: 60,
            });
        }
    }
    Ok(n)
}

/// The demo ministry's world: who lives where now.
#[derive(Debug)]
pub struct DemoWorld {
    rng: StdRng,
    live: BTreeMap<String, Json>,
    keys: Vec<String>,
    serial: u64,
    last_before: Option<Json>,
}

impl DemoWorld {
    /// A world driven by `seed` (the same seed gives the same changes).
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            live: BTreeMap::new(),
            keys: Vec::new(),
            serial: 0,
            last_before: None,
        }
    }

    /// Every resident alive now, by citizen id.
    pub fn live(&self) -> &BTreeMap<String, Json> {
        &self.live
    }

    /// Residents whose permanent address is in `province` now.
    pub fn in_province(&self, province: &str) -> BTreeMap<String, Json> {
        self.live
            .iter()
            .filter(|(_, r)| r["permanent_address"]["province_code"] == province)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn address(&mut self) -> Json {
        let (p, communes) = PROVINCES[self.rng.gen_range(0..PROVINCES.len())];
        let c = communes[self.rng.gen_range(0..communes.len())];
        let street = if self.rng.gen_bool(0.7) {
            json!(format!(
                "{} {}",
                self.rng.gen_range(1..400),
                STREETS[self.rng.gen_range(0..STREETS.len())]
            ))
        } else {
            Json::Null
        };
        json!({"province_code": p, "commune_code": c, "street": street})
    }

    fn name(&mut self) -> String {
        format!(
            "{} {} {}",
            FAMILY[self.rng.gen_range(0..FAMILY.len())],
            MIDDLE[self.rng.gen_range(0..MIDDLE.len())],
            GIVEN[self.rng.gen_range(0..GIVEN.len())]
        )
    }

    /// A resident not seen before (a fresh citizen id), not added to the
    /// world: for loads of distinct residents.
    pub fn new_resident(&mut self) -> Json {
        self.serial += 1;
        let year = self.rng.gen_range(1930..2020);
        let female = self.rng.gen_bool(0.5);
        let century = match (year >= 2000, female) {
            (false, false) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (true, true) => 3,
        };
        let birth_province = PROVINCES[self.rng.gen_range(0..PROVINCES.len())].0;
        let id = format!(
            "0{birth_province}{century}{:02}{:06}",
            year % 100,
            self.serial % 1_000_000
        );
        json!({
            "citizen_id": id,
            "full_name": self.name(),
            "date_of_birth": format!("{year}-{:02}-{:02}", self.rng.gen_range(1..13), self.rng.gen_range(1..29)),
            "sex": if female { "FEMALE" } else { "MALE" },
            "ethnicity": ETHNICITIES[self.rng.gen_range(0..ETHNICITIES.len())],
            "permanent_address": self.address(),
            "updated_at": govbus_core::now_ms(),
        })
    }

    /// The next change and the entity's state before it.
    pub fn next_with_before(&mut self) -> (ChangeRequest, Option<Json>) {
        let req = self.next_change();
        (req, self.last_before.take())
    }

    /// The next change, applied to the world.
    pub fn next_change(&mut self) -> ChangeRequest {
        let roll: f64 = self.rng.gen();
        if self.keys.len() < 20 || roll < 0.40 {
            let r = self.new_resident();
            let key = r["citizen_id"].as_str().unwrap_or_default().to_string();
            self.keys.push(key.clone());
            self.live.insert(key, r.clone());
            self.last_before = None;
            return ChangeRequest::Upsert(r);
        }
        let i = self.rng.gen_range(0..self.keys.len());
        let key = self.keys[i].clone();
        if roll < 0.90 {
            let mut r = self.live[&key].clone();
            self.last_before = Some(r.clone());
            if roll < 0.65 {
                r["full_name"] = json!(self.name()); // an update in place
                if let Some(s) = r["permanent_address"].get_mut("street") {
                    *s = json!(format!("{} Lê Lợi", self.rng.gen_range(1..400)));
                }
            } else {
                r["permanent_address"] = self.address(); // a move (maybe across provinces)
            }
            r["updated_at"] = json!(govbus_core::now_ms());
            self.live.insert(key, r.clone());
            ChangeRequest::Upsert(r)
        } else {
            self.keys.swap_remove(i);
            self.last_before = self.live.remove(&key);
            ChangeRequest::Delete { key }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_has_moves_deletes_and_no_ethnicity_in_names() {
        let mut w = DemoWorld::new(7);
        let mut deletes = 0;
        for _ in 0..1000 {
            if let ChangeRequest::Delete { .. } = w.next_change() {
                deletes += 1;
            }
        }
        assert!(deletes > 20);
        for r in w.live().values() {
            let name = r["full_name"].as_str().unwrap();
            assert!(ETHNICITIES.iter().all(|e| !name.contains(e)), "{name}");
            assert_eq!(r["citizen_id"].as_str().unwrap().len(), 12);
        }
        let total: usize = PROVINCES.iter().map(|(p, _)| w.in_province(p).len()).sum();
        assert_eq!(total, w.live().len());
    }

    #[test]
    fn every_demo_code_is_an_admin_unit_under_its_province() {
        let units = admin_units();
        let parent = |code: &str| {
            units
                .iter()
                .find(|u| u["code"] == code)
                .map(|u| u["parent_code"].clone())
        };
        let mut w = DemoWorld::new(3);
        for _ in 0..300 {
            w.next_change();
        }
        for r in w.live().values() {
            let a = &r["permanent_address"];
            let p = a["province_code"].as_str().unwrap();
            assert_eq!(parent(p), Some(Json::Null), "{p}");
            assert_eq!(parent(a["commune_code"].as_str().unwrap()), Some(json!(p)));
        }
    }
}
