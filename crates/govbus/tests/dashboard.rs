//! The operations board in a real browser (Debian's chromium, headless):
//! a change posted at the ministry changes the figure on the page without
//! a reload; the page switches to English; a frozen snapshot downloads; a
//! screenshot is kept for the docs.

use std::time::{Duration, Instant};

use govbus_e2e::{consumer_config, free_port, wait_until, Browser, Bus, Worker};
use govbus_producer::ChangeRequest;
use serde_json::json;

fn resident(id: &str, commune: &str) -> ChangeRequest {
    let province = if commune.starts_with("215") {
        "52"
    } else {
        "92"
    };
    ChangeRequest::Upsert(json!({
        "citizen_id": id, "full_name": "Nguyễn Thị Hoa", "date_of_birth": "1991-03-04",
        "sex": "FEMALE", "ethnicity": "Kinh",
        "permanent_address": {"province_code": province, "commune_code": commune},
        "updated_at": govbus_core::now_ms()
    }))
}

#[test]
fn a_change_at_the_ministry_changes_the_figure_on_the_page() {
    let bus = Bus::start();
    let (kafka, prefix, registry) = (&bus.kafka, &bus.prefix, &bus.registry);
    let publisher = bus.publisher("t");
    let _router = bus.router();
    let _relay = bus.relay(&publisher);
    let mut files = Vec::new();
    let mut consumers = Vec::new();
    for p in ["p52", "p92"] {
        let db = bus.dir.path().join(format!("{p}.db"));
        let mut cfg = consumer_config(kafka, registry, prefix, p, "sqlite", "");
        cfg.sink = govbus_consumer::SinkConfig::Sqlite(govbus_consumer::sink::SqliteConfig {
            path: db.display().to_string(),
        });
        let file = bus.dir.path().join(format!("{p}.toml"));
        std::fs::write(
            &file,
            format!(
                "[consumer]\nsubscriber = \"{p}\"\nregistry = \"{registry}\"\ntopic_prefix = \"{prefix}\"\n\
                 [consumer.sink]\ntype = \"sqlite\"\npath = \"{}\"\n[consumer.kafka]\nbootstrap = \"{}\"\n",
                db.display(),
                kafka.bootstrap
            ),
        )
        .unwrap();
        files.push(file);
        let catalog = bus.catalog.clone();
        consumers.push(Worker::spawn(p, move |stop| {
            govbus_consumer::run(&cfg, &catalog, stop).unwrap()
        }));
    }
    // Two residents of Gia Lai and one of Cần Thơ.
    for (id, commune) in [
        ("052991000901", "21553"),
        ("052991000902", "21583"),
        ("092991000903", "31507"),
    ] {
        publisher
            .submit("bca.residents", resident(id, commune))
            .unwrap();
    }

    let port = free_port();
    let mut dashboard = std::process::Command::new(env!("CARGO_BIN_EXE_govbus"))
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .args(files.iter().flat_map(|f| ["-c".as_ref(), f.as_os_str()]))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let url = format!("http://127.0.0.1:{port}/");
    wait_until(Duration::from_secs(60), "the dashboard to answer", || {
        assert!(
            dashboard.try_wait().unwrap().is_none(),
            "the dashboard exited"
        );
        ureq::get(&format!("{url}state")).call().ok().map(|_| ())
    });
    let _dashboard = Kill(dashboard);

    let browser = Browser::start();
    let mut page = browser.open(&url);
    let total = |page: &mut govbus_e2e::Page, p: &str| -> Option<i64> {
        page.eval(&format!(
            "(() => {{ const e = document.getElementById('total-{p}-population'); return e ? Number(e.dataset.value) : null; }})()"
        ))
        .as_i64()
    };
    wait_until(
        Duration::from_secs(90),
        "both provinces' figures on the page",
        || {
            for c in &consumers {
                assert!(!c.finished(), "{} stopped", c.name());
            }
            (total(&mut page, "p52") == Some(2) && total(&mut page, "p92") == Some(1)).then_some(())
        },
    );
    assert_eq!(page.eval("document.documentElement.lang"), json!("vi"));
    assert!(page
        .eval("document.body.innerText")
        .as_str()
        .unwrap()
        .contains("Dân số theo xã, giới tính và nhóm tuổi"));
    // The page is the same document from here on: a reload would lose this.
    page.eval("window.__govbus_marker = 7");

    // A new resident of Gia Lai, posted at the ministry.
    let posted = Instant::now();
    publisher
        .submit("bca.residents", resident("052991000904", "21592"))
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the new resident on the page",
        || (total(&mut page, "p52") == Some(3)).then_some(()),
    );
    println!(
        "dashboard: from the ministry's change to the figure on screen in {:.2} s",
        posted.elapsed().as_secs_f64()
    );
    assert_eq!(page.eval("window.__govbus_marker"), json!(7), "no reload");
    assert_eq!(total(&mut page, "p92"), Some(1));
    let communes = page.eval("document.getElementById('province-p52').innerText");
    assert!(
        communes.as_str().unwrap().contains("(21592)"),
        "the commune's bar is labelled by name and code: {communes}"
    );

    // A snapshot frozen for the month appears with its downloads.
    let p52 = files[0].to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_govbus"))
        .args(["report", "freeze", "-c", p52, "--at", "2026-11-30"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_until(
        Duration::from_secs(30),
        "the snapshot listed on the page",
        || {
            let links = page.eval(
            "Array.from(document.querySelectorAll('#province-p52 a')).map(a => a.getAttribute('href'))",
        );
            links
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == "/snapshots/p52/population/2026-11-30.csv")
                .then_some(())
        },
    );
    let csv = ureq::get(&format!("{url}snapshots/p52/population/2026-11-30.csv"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(csv.ends_with("Tổng cộng,,,3\n"), "{csv}");

    // English on a click, still live.
    page.eval("document.getElementById('lang-en').click()");
    assert_eq!(page.eval("document.documentElement.lang"), json!("en"));
    let text = page.eval("document.body.innerText");
    assert!(
        text.as_str()
            .unwrap()
            .contains("Population by commune, sex and age band")
            && text.as_str().unwrap().contains("Frozen periodic reports"),
        "{text}"
    );
    page.eval("document.getElementById('lang-vi').click()");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    page.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    println!("dashboard: screenshot at {}", shot.display());
}
