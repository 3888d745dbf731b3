//! Host telemetry on fixture sysfs/procfs trees: RAPL (incl. counter wrap and unreadable
//! counters), hwmon labels and nonsense values, /proc/stat utilisation.

use hearth_energy::telemetry::sysfs::{detect_host_cpu, hwmon_temps, proc_stat_cpu, rapl_domains};
use hearth_energy::{validate, Health, HealthIssue};
use std::fs;
use std::path::Path;

fn write(p: &Path, s: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

fn stat_line(busy: u64, idle: u64) -> String {
    // user nice system idle iowait irq softirq steal guest guest_nice
    format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2 3\n")
}

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let sys = t.path().join("sys");
    let rapl = sys.join("class/powercap/intel-rapl:0");
    write(&rapl.join("name"), "package-0\n");
    write(&rapl.join("energy_uj"), "999000000\n");
    write(&rapl.join("max_energy_range_uj"), "1000000000\n");
    // A sub-domain that must be ignored (it is part of the package).
    write(&sys.join("class/powercap/intel-rapl:0:0/energy_uj"), "5\n");
    write(
        &sys.join("class/powercap/intel-rapl:0:0/max_energy_range_uj"),
        "10\n",
    );
    let hw = sys.join("class/hwmon/hwmon0");
    write(&hw.join("name"), "coretemp\n");
    write(&hw.join("temp1_input"), "61000\n");
    write(&hw.join("temp1_label"), "Package id 0\n");
    write(&hw.join("temp2_input"), "58500\n");
    let nv = sys.join("class/hwmon/hwmon1");
    write(&nv.join("name"), "nvme\n");
    write(&nv.join("temp1_input"), "40000\n");
    write(&t.path().join("proc/stat"), &stat_line(100, 900));
    t
}

#[test]
fn rapl_power_from_counter_deltas_including_wrap() {
    let t = tree();
    let sys = t.path().join("sys");
    let (mut doms, notes) = rapl_domains(&sys);
    assert_eq!(doms.len(), 1, "{notes:?}");
    assert_eq!(doms[0].name, "package-0");
    let (p, _) = doms[0].sample(0.0).unwrap();
    assert_eq!(p, None, "the first sample has no delta");
    // Wrap: 999 J → range 1000 J → 1 J: 2 J over 2 s = 1 W... scaled: 999_000_000 → 1_000_000 µJ.
    write(
        &sys.join("class/powercap/intel-rapl:0/energy_uj"),
        "1000000\n",
    );
    let (p, e) = doms[0].sample(2.0).unwrap();
    assert!((p.unwrap() - 1.0).abs() < 1e-9, "{p:?}");
    assert!((e - 2.0).abs() < 1e-9);
    write(
        &sys.join("class/powercap/intel-rapl:0/energy_uj"),
        "101000000\n",
    );
    let (p, e) = doms[0].sample(4.0).unwrap();
    assert!((p.unwrap() - 50.0).abs() < 1e-9, "{p:?}");
    assert!((e - 102.0).abs() < 1e-9);
}

#[test]
fn unreadable_or_garbage_rapl_is_absent_with_a_reason() {
    let t = tree();
    let sys = t.path().join("sys");
    let f = sys.join("class/powercap/intel-rapl:0/energy_uj");
    fs::remove_file(&f).unwrap();
    fs::create_dir(&f).unwrap(); // reading a directory fails like an unreadable file
    let (doms, notes) = rapl_domains(&sys);
    assert!(doms.is_empty());
    assert!(notes.iter().any(|n| n.contains("package-0")), "{notes:?}");
    fs::remove_dir(&f).unwrap();
    write(&f, "lots of joules\n");
    let (doms, notes) = rapl_domains(&sys);
    assert!(doms.is_empty());
    assert!(
        notes.iter().any(|n| n.contains("cannot parse")),
        "{notes:?}"
    );
    let (doms, notes) = rapl_domains(&t.path().join("nowhere"));
    assert!(doms.is_empty() && notes.iter().any(|n| n.contains("RAPL absent")));
}

#[test]
fn hwmon_labels_and_cpu_temperature() {
    let t = tree();
    let sensors = hwmon_temps(&t.path().join("sys"));
    assert_eq!(sensors.len(), 3);
    assert_eq!(sensors[0].label, "Package id 0");
    assert_eq!(sensors[0].temp_c, 61.0);
    assert_eq!(sensors[1].label, "temp2");
    assert_eq!(sensors[2].chip, "nvme");
}

#[test]
fn proc_stat_utilisation_and_errors() {
    let t = tree();
    let proc_root = t.path().join("proc");
    assert_eq!(proc_stat_cpu(&proc_root).unwrap(), (100, 1000));
    write(&proc_root.join("stat"), "cpu  1 2 x 4\n");
    assert!(proc_stat_cpu(&proc_root).is_err());
    write(&proc_root.join("stat"), "intr 1\n");
    assert!(proc_stat_cpu(&proc_root).is_err());
}

#[test]
fn host_cpu_reading_combines_sources_and_flags_nonsense() {
    let t = tree();
    let sys = t.path().join("sys");
    let proc_root = t.path().join("proc");
    let det = detect_host_cpu(&sys, &proc_root);
    assert!(
        det.has_power && det.has_temp && det.has_util,
        "{:?}",
        det.notes
    );
    let r0 = det.cpu.read_now(0.0);
    assert_eq!(r0.power_w, None);
    assert_eq!(r0.temp_c, Some(61.0));
    write(
        &sys.join("class/powercap/intel-rapl:0/energy_uj"),
        "999000000\n",
    );
    write(&proc_root.join("stat"), &stat_line(400, 1600));
    // Same counter → 0 W; busy 300 of 1000 jiffies → 30 %.
    let r1 = det.cpu.read_now(10.0);
    assert_eq!(r1.power_w, Some(0.0));
    assert!((r1.utilization.unwrap() - 0.3).abs() < 1e-9);
    assert_eq!(validate(&r1, 10.0, 180.0, true), Health::Ok);
    // A sensor reporting 500 °C makes the device unhealthy.
    write(&sys.join("class/hwmon/hwmon0/temp2_input"), "500000\n");
    let r2 = det.cpu.read_now(20.0);
    assert!(matches!(
        validate(&r2, 20.0, 180.0, true),
        Health::Unhealthy(HealthIssue::BadTemperature { .. })
    ));
    // The RAPL counter vanishing is a fault, not a crash.
    fs::remove_file(sys.join("class/powercap/intel-rapl:0/energy_uj")).unwrap();
    let r3 = det.cpu.read_now(30.0);
    assert!(r3.fault.as_deref().unwrap_or("").contains("RAPL"), "{r3:?}");
}

#[test]
fn oversized_sysfs_value_is_rejected() {
    let t = tree();
    let sys = t.path().join("sys");
    write(
        &sys.join("class/powercap/intel-rapl:0/energy_uj"),
        &"9".repeat(10_000),
    );
    let (doms, notes) = rapl_domains(&sys);
    assert!(doms.is_empty());
    assert!(notes.iter().any(|n| n.contains("longer than")), "{notes:?}");
}
