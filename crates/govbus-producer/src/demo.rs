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

/// The five demo provinces of today's map (after 1 July 2025) and some of
/// their communes: (province code, commune codes). Gia Lai (52) holds
/// former Bình Định with Quy Nhơn; Cần Thơ (92) holds former Sóc Trăng (94)
/// and Hậu Giang; Hồ Chí Minh City (79) holds former Bình Dương (74).
pub const PROVINCES: &[(&str, &[&str])] = &[
    ("52", &["21553", "21583", "21592", "21589"]),
    ("92", &["31507", "31510", "31528", "31540"]),
    ("01", &["00004", "00008", "00070"]),
    ("79", &["26737", "25747", "25750"]),
    ("48", &["20194", "20209", "20242"]),
];

/// For each demo commune, a commune before the reform that was merged
/// whole into it: (commune now, province before, commune before). Source
/// systems still send such codes; the producer normalises them.
pub const FORMER: &[(&str, &str, &str)] = &[
    ("21553", "52", "21559"), // Phường Trần Quang Diệu → Phường Quy Nhơn Bắc
    ("21583", "52", "21562"), // Phường Hải Cảng → Phường Quy Nhơn
    ("21592", "52", "21565"), // Phường Quang Trung → Phường Quy Nhơn Nam
    ("21589", "52", "21991"), // Xã Phước Mỹ → Phường Quy Nhơn Tây
    ("31507", "94", "31498"), // Sóc Trăng, Phường 5 → Phường Sóc Trăng (Cần Thơ)
    ("31510", "94", "31522"), // Sóc Trăng, Phường 1 → Phường Phú Lợi (Cần Thơ)
    ("31528", "94", "31555"), // Xã Kế Thành → Xã Kế Sách (Cần Thơ)
    ("31540", "94", "31549"), // Xã Thới An Hội → Xã Thới An Hội (Cần Thơ)
    ("00004", "01", "00013"), // Phường Quán Thánh → Phường Ba Đình
    ("00008", "01", "00006"), // Phường Vĩnh Phúc → Phường Ngọc Hà
    ("00070", "01", "00043"), // Phường Hàng Mã → Phường Hoàn Kiếm
    ("26737", "79", "26734"), // Phường Tân Định → Phường Tân Định
    ("25747", "74", "25753"), // Bình Dương, Phường Phú Thọ → Phường Thủ Dầu Một
    ("25750", "74", "25744"), // Bình Dương, Phường Phú Lợi → Phường Phú Lợi
    ("20194", "48", "20195"), // Phường Hòa Hiệp Nam → Phường Hải Vân
    ("20209", "48", "20206"), // Phường Thanh Khê Tây → Phường Thanh Khê
    ("20242", "48", "20236"), // Phường Hải Châu I → Phường Hải Châu
];

/// A commune before the reform that was merged in part into several
/// communes, and those communes: a code the producer refuses, naming them
/// (the first such code of Sóc Trăng in the real map, else of any province).
pub fn split_example() -> (&'static str, Vec<String>) {
    let map = govbus_core::admin_map::reference();
    let before = govbus_core::admin_map::reform_day()
        .pred_opt()
        .unwrap_or_default();
    let split = |province: Option<&str>| {
        map.iter().find_map(|(c, vs)| {
            let v = vs.iter().find(|v| v.valid_on(before))?;
            (v.level == govbus_core::admin_map::Level::Commune
                && v.successors.len() > 1
                && province.is_none_or(|p| map.province_of(c, before).is_some_and(|q| q.code == p)))
            .then(|| (c, v.successors.iter().map(|s| s.code.clone()).collect()))
        })
    };
    split(Some("94"))
        .or_else(|| split(None))
        .unwrap_or(("", vec![]))
}

/// The province today of a demo address as sent (its commune may be one
/// from before the reform, which the producer normalises).
pub fn province_now(address: &Json) -> Option<&'static str> {
    let c = address["commune_code"].as_str()?;
    let now = FORMER
        .iter()
        .find(|(_, _, old)| *old == c)
        .map_or(c, |(now, _, _)| now);
    PROVINCES
        .iter()
        .find(|(_, communes)| communes.contains(&now))
        .map(|(p, _)| *p)
}

/// The demo's administrative units as `moha.admin_units` (v2) rows: a slice
/// of the real map (the shipped reference data) holding the demo's
/// provinces and communes, the units before the reform that went into them
/// and those units' districts, each code with its history.
pub fn admin_units() -> Vec<Json> {
    let map = govbus_core::admin_map::reference();
    let before = govbus_core::admin_map::reform_day()
        .pred_opt()
        .unwrap_or_default();
    let mut codes: Vec<&str> = Vec::new();
    for (p, communes) in PROVINCES {
        codes.push(p);
        codes.extend(communes.iter().copied());
    }
    for (_, old_p, old_c) in FORMER {
        codes.push(old_p);
        codes.push(old_c);
    }
    let (split, candidates) = split_example();
    codes.push(split);
    codes.extend(candidates.iter().map(String::as_str));
    let split_province = map.province_of(split, before).map(|p| p.code.clone());
    codes.extend(split_province.as_deref());
    let districts: Vec<String> = FORMER
        .iter()
        .map(|(_, _, c)| *c)
        .chain([split])
        .filter_map(|c| map.at(c, before)?.parent.clone())
        .collect();
    codes.extend(districts.iter().map(String::as_str));
    map.slice(codes).rows().collect()
}

/// Publishes [`admin_units`] as the `moha` ministry: a publisher on
/// `store_url`, its central topic created, every unit relayed to the cluster
/// before this returns. Returns how many units. For tests, benchmarks and
/// `govbus up`, which need the catalog before residents can be accepted.
pub fn seed_admin_units(
    catalog: &govbus_core::Catalog,
    topics: &govbus_core::Topics,
    kafka: &govbus_kafka_client::KafkaConfig,
    registry: &govbus_schema::RegistryClient,
    store_url: &str,
) -> Result<usize, crate::AgentError> {
    seed_units(catalog, topics, kafka, registry, store_url, admin_units())
}

/// [`seed_admin_units`] with other rows (the whole map, for a benchmark).
pub fn seed_units(
    catalog: &govbus_core::Catalog,
    topics: &govbus_core::Topics,
    kafka: &govbus_kafka_client::KafkaConfig,
    registry: &govbus_schema::RegistryClient,
    store_url: &str,
    rows: Vec<Json>,
) -> Result<usize, crate::AgentError> {
    let store = crate::open_store(store_url, "moha_outbox")?;
    let p = crate::Publisher::new(catalog, "moha", "demo", topics, kafka, registry, store)?;
    crate::ensure_topics(kafka, &p, 4)?;
    let units: Vec<ChangeRequest> = rows.into_iter().map(ChangeRequest::Upsert).collect();
    let n = units.len();
    p.submit_batch("moha.admin_units", units)?;
    let mut relay = crate::Relay::new(kafka, p.store(), p.wakeup())?;
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

/// `n` demo changes (creates, updates, snapshots, moves, deletes) as the
/// relay publishes them: wire-format change envelopes of
/// `bca/residents.v2` under schema id `schema_id`, the first stamped
/// `ts_ms` and each next one a millisecond later. For benchmarks and tests
/// of the routing path without an ingest.
pub fn envelopes(n: usize, seed: u64, schema_id: u32, ts_ms: i64) -> Vec<Vec<u8>> {
    use apache_avro::Schema;
    use govbus_schema::envelope::envelope_schema;
    use govbus_schema::{Change, EnvelopeCodec, Op, Source};
    const RESIDENTS: &str = include_str!("../../../schemas/bca/residents.v2.avsc");
    let env = envelope_schema(RESIDENTS)
        .ok()
        .and_then(|e| Schema::parse_str(&e).ok());
    let (Ok(entity), Some(env)) = (Schema::parse_str(RESIDENTS), env) else {
        return Vec::new();
    };
    let codec = EnvelopeCodec::new(env, schema_id);
    let mut world = DemoWorld::new(seed);
    let avro = |j: &Json| govbus_schema::json::to_avro(&entity, j).ok();
    (0..n)
        .filter_map(|i| {
            let (req, before) = world.next_with_before();
            let (op, after) = match &req {
                ChangeRequest::Upsert(r) if before.is_none() => (Op::Create, avro(r)),
                ChangeRequest::Upsert(r) if i % 17 == 0 => (Op::Snapshot, avro(r)),
                ChangeRequest::Upsert(r) => (Op::Update, avro(r)),
                ChangeRequest::Delete { .. } => (Op::Delete, None),
            };
            codec
                .encode(&Change {
                    event_id: format!("e{i}"),
                    op,
                    before: before.as_ref().and_then(avro),
                    after,
                    source: Source {
                        agency: "bca".into(),
                        system: "demo".into(),
                        seq: i as i64 + 1,
                    },
                    ts_ms: ts_ms + i as i64,
                })
                .ok()
        })
        .collect()
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

    /// A permanent address: as sent and as stored. One in eight is sent
    /// with the codes of a commune before the reform (source systems still
    /// use them), which the producer normalises to today's.
    fn address(&mut self) -> (Json, Json) {
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
        let stored = json!({"province_code": p, "commune_code": c, "street": street});
        let former = FORMER.iter().find(|(now, ..)| *now == c);
        match former {
            Some((_, old_p, old_c)) if self.rng.gen_bool(0.125) => {
                let sent = json!({"province_code": old_p, "commune_code": old_c, "street": street});
                let mut stored = stored;
                stored["province_code_as_sent"] = json!(old_p);
                stored["commune_code_as_sent"] = json!(old_c);
                if *old_p == p {
                    stored["province_code_as_sent"] = Json::Null;
                }
                (sent, stored)
            }
            _ => (stored.clone(), stored),
        }
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
    /// world: for loads of distinct residents (as sent).
    pub fn new_resident(&mut self) -> Json {
        self.new_resident_pair().0
    }

    /// A resident not seen before: as sent, and as stored once its codes
    /// are normalised.
    fn new_resident_pair(&mut self) -> (Json, Json) {
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
        let (sent, stored) = self.address();
        let r = json!({
            "citizen_id": id,
            "full_name": self.name(),
            "date_of_birth": format!("{year}-{:02}-{:02}", self.rng.gen_range(1..13), self.rng.gen_range(1..29)),
            "sex": if female { "FEMALE" } else { "MALE" },
            "ethnicity": ETHNICITIES[self.rng.gen_range(0..ETHNICITIES.len())],
            "permanent_address": sent,
            "updated_at": govbus_core::now_ms(),
        });
        let mut kept = r.clone();
        kept["permanent_address"] = stored;
        (r, kept)
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
            let (r, kept) = self.new_resident_pair();
            let key = r["citizen_id"].as_str().unwrap_or_default().to_string();
            self.keys.push(key.clone());
            self.live.insert(key, kept);
            self.last_before = None;
            return ChangeRequest::Upsert(r);
        }
        let i = self.rng.gen_range(0..self.keys.len());
        let key = self.keys[i].clone();
        if roll < 0.90 {
            let mut r = self.live[&key].clone();
            self.last_before = Some(r.clone());
            let mut kept;
            if roll < 0.65 {
                r["full_name"] = json!(self.name()); // an update in place
                if let Some(a) = r["permanent_address"].as_object_mut() {
                    a.insert(
                        "street".into(),
                        json!(format!("{} Lê Lợi", self.rng.gen_range(1..400))),
                    );
                    // Sent with today's codes: nothing normalised.
                    a.remove("province_code_as_sent");
                    a.remove("commune_code_as_sent");
                }
                kept = r.clone();
            } else {
                let (sent, stored) = self.address(); // a move (maybe across provinces)
                r["permanent_address"] = sent;
                kept = r.clone();
                kept["permanent_address"] = stored;
            }
            let now = json!(govbus_core::now_ms());
            r["updated_at"] = now.clone();
            kept["updated_at"] = now;
            self.live.insert(key, kept);
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
    fn every_demo_code_is_a_real_unit_and_every_former_code_went_whole_into_its_commune() {
        let (map, _) = govbus_core::admin_map::AdminMap::from_rows(&admin_units());
        let today = govbus_core::admin_map::day_of_ms(govbus_core::now_ms());
        let before = govbus_core::admin_map::reform_day().pred_opt().unwrap();
        for (p, communes) in PROVINCES {
            for c in *communes {
                let v = map
                    .at(c, today)
                    .unwrap_or_else(|| panic!("{c} is valid today"));
                assert_eq!(v.parent.as_deref(), Some(*p), "{c}");
            }
        }
        for (now, old_p, old_c) in FORMER {
            match map.resolve(old_c, today) {
                govbus_core::admin_map::Resolved::Succeeded { now: v, .. } => {
                    assert_eq!(v.code, *now, "{old_c}")
                }
                other => panic!("{old_c}: {other:?}"),
            }
            assert_eq!(
                map.province_of(old_c, before).map(|v| v.code.as_str()),
                Some(*old_p),
                "{old_c}"
            );
        }
        let mut w = DemoWorld::new(3);
        let mut former = 0;
        for _ in 0..300 {
            if let ChangeRequest::Upsert(r) = w.next_change() {
                let c = r["permanent_address"]["commune_code"].as_str().unwrap();
                former += usize::from(FORMER.iter().any(|(_, _, o)| *o == c));
            }
        }
        assert!(
            former > 5,
            "some changes carry codes from before the reform"
        );
        for r in w.live().values() {
            let a = &r["permanent_address"];
            let p = a["province_code"].as_str().unwrap();
            let c = a["commune_code"].as_str().unwrap();
            assert_eq!(map.at(c, today).and_then(|v| v.parent.as_deref()), Some(p));
        }
    }
}
