//! The swagger validator itself: it reads firecracker-api.yaml, every typed body this crate
//! sends matches its definition field for field, and each kind of mismatch is caught.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use bazel_diff_firecracker::fake::swagger::{Rejection, Swagger, SwaggerError};
use bazel_diff_firecracker::*;
use serde::Serialize;
use serde_json::{json, Value};

fn swagger() -> std::sync::Arc<Swagger> {
    Swagger::shared().unwrap_or_else(|e| panic!("{e}"))
}

fn check<T: Serialize>(definition: &str, value: &T) {
    let json = serde_json::to_value(value).unwrap();
    if let Err(e) = swagger().validate_definition(definition, &json) {
        panic!("{definition} {json}: {e}");
    }
}

#[test]
fn reads_the_shared_swagger() {
    let s = swagger();
    assert_eq!(s.version(), "1.17.0-dev");
    assert!(s.path().ends_with("firecracker-api.yaml"));
    let ops: Vec<(&str, &str)> = s
        .operations()
        .iter()
        .map(|o| (o.method.as_str(), o.template.as_str()))
        .collect();
    for route in [
        ("GET", "/"),
        ("GET", "/version"),
        ("PUT", "/actions"),
        ("PUT", "/boot-source"),
        ("PUT", "/drives/{drive_id}"),
        ("PATCH", "/drives/{drive_id}"),
        ("PUT", "/machine-config"),
        ("PUT", "/network-interfaces/{iface_id}"),
        ("PUT", "/vsock"),
        ("PUT", "/entropy"),
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("PUT", "/snapshot/load"),
        ("GET", "/vm/config"),
    ] {
        assert!(ops.contains(&route), "{route:?} missing from the swagger");
    }
}

#[test]
fn yaml_scalars_that_look_like_booleans_stay_strings() {
    // YAML 1.1 would read `Off` as false and a loader could read `2M` oddly.
    let s = swagger();
    s.validate_definition("Logger", &json!({"level": "Off"}))
        .unwrap();
    s.validate_definition(
        "MachineConfiguration",
        &json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}),
    )
    .unwrap();
    s.validate_definition("CpuTemplate", &json!("None"))
        .unwrap();
}

#[test]
fn every_typed_body_matches_its_definition() {
    let bucket = TokenBucket {
        size: 1,
        refill_time: 2,
        one_time_burst: Some(3),
    };
    let limiter = RateLimiter {
        bandwidth: Some(bucket),
        ops: Some(bucket),
    };
    check(
        "BootSource",
        &BootSource {
            kernel_image_path: "k".into(),
            boot_args: Some("a".into()),
            initrd_path: Some("i".into()),
        },
    );
    for (cache, engine) in [
        (CacheType::Unsafe, IoEngine::Sync),
        (CacheType::Writeback, IoEngine::Async),
    ] {
        check(
            "Drive",
            &Drive {
                drive_id: "d".into(),
                is_root_device: true,
                partuuid: Some("p".into()),
                cache_type: Some(cache),
                is_read_only: Some(true),
                path_on_host: Some("x".into()),
                rate_limiter: Some(limiter),
                io_engine: Some(engine),
                socket: None,
            },
        );
    }
    check(
        "Drive",
        &Drive {
            drive_id: "vhost".into(),
            socket: Some("s".into()),
            ..Drive::default()
        },
    );
    check(
        "PartialDrive",
        &PartialDrive {
            drive_id: "d".into(),
            path_on_host: Some("x".into()),
            rate_limiter: Some(limiter),
        },
    );
    let templates = [
        CpuTemplate::C3,
        CpuTemplate::T2,
        CpuTemplate::T2S,
        CpuTemplate::T2CL,
        CpuTemplate::T2A,
        CpuTemplate::V1N1,
        CpuTemplate::None,
    ];
    let huge = [
        HugePages::None,
        HugePages::Transparent,
        HugePages::Hugetlbfs2M,
    ];
    for (i, template) in templates.iter().enumerate() {
        check(
            "MachineConfiguration",
            &MachineConfiguration {
                vcpu_count: 32,
                mem_size_mib: 8192,
                smt: Some(true),
                track_dirty_pages: Some(true),
                cpu_template: Some(*template),
                huge_pages: Some(huge[i % huge.len()]),
            },
        );
    }
    check(
        "NetworkInterface",
        &NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap".into(),
            guest_mac: Some("06:00:00:00:00:01".into()),
            mtu: Some(65535),
            rx_rate_limiter: Some(limiter),
            tx_rate_limiter: Some(limiter),
        },
    );
    check(
        "PartialNetworkInterface",
        &PartialNetworkInterface {
            iface_id: "eth0".into(),
            rx_rate_limiter: Some(limiter),
            tx_rate_limiter: Some(limiter),
        },
    );
    check(
        "Vsock",
        &Vsock {
            guest_cid: 3,
            uds_path: "v".into(),
        },
    );
    check(
        "EntropyDevice",
        &EntropyDevice {
            rate_limiter: Some(limiter),
        },
    );
    for level in [
        LogLevel::Error,
        LogLevel::Warning,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
        LogLevel::Off,
    ] {
        check(
            "Logger",
            &Logger {
                level: Some(level),
                log_path: Some("l".into()),
                show_level: Some(true),
                show_log_origin: Some(false),
                module: Some("m".into()),
            },
        );
    }
    check(
        "Metrics",
        &Metrics {
            metrics_path: "m".into(),
            emit_id: Some(true),
            properties: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        },
    );
    check(
        "SerialDevice",
        &SerialDevice {
            serial_out_path: Some("s".into()),
            rate_limiter: Some(bucket),
        },
    );
    check(
        "Balloon",
        &Balloon {
            amount_mib: 1,
            deflate_on_oom: true,
            stats_polling_interval_s: Some(1),
            free_page_hinting: Some(true),
            free_page_reporting: Some(true),
        },
    );
    check("BalloonUpdate", &BalloonUpdate { amount_mib: 1 });
    for action_type in [
        ActionType::FlushMetrics,
        ActionType::InstanceStart,
        ActionType::SendCtrlAltDel,
    ] {
        check("InstanceActionInfo", &InstanceActionInfo { action_type });
    }
    for state in [VmState::Paused, VmState::Resumed] {
        check("Vm", &Vm { state });
    }
    for snapshot_type in [SnapshotType::Full, SnapshotType::Diff] {
        check(
            "SnapshotCreateParams",
            &SnapshotCreateParams {
                mem_file_path: "m".into(),
                snapshot_path: "s".into(),
                snapshot_type: Some(snapshot_type),
            },
        );
    }
    for (backend, huge) in [
        (BackendType::File, LoadHugePages::Snapshot),
        (BackendType::Uffd, LoadHugePages::None),
        (BackendType::File, LoadHugePages::Transparent),
        (BackendType::Uffd, LoadHugePages::Hugetlbfs2M),
    ] {
        let mut load = SnapshotLoadParams::new("s", backend, "m");
        load.track_dirty_pages = Some(true);
        load.enable_diff_snapshots = Some(false);
        load.resume_vm = Some(true);
        load.network_overrides = vec![NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "tap1".into(),
        }];
        load.vsock_override = Some(VsockOverride {
            uds_path: "v".into(),
        });
        load.clock_realtime = Some(true);
        load.huge_pages = Some(huge);
        check("SnapshotLoadParams", &load);
    }
    for state in [
        InstanceState::NotStarted,
        InstanceState::Running,
        InstanceState::Paused,
    ] {
        check(
            "InstanceInfo",
            &InstanceInfo {
                app_name: "Firecracker".into(),
                id: "x".into(),
                state,
                vmm_version: "1".into(),
            },
        );
    }
    check(
        "FirecrackerVersion",
        &FirecrackerVersion {
            firecracker_version: "1.17.0-dev".into(),
        },
    );
    check(
        "Error",
        &ApiFault {
            fault_message: Some("x".into()),
        },
    );
}

#[test]
fn each_kind_of_mismatch_is_caught() {
    let s = swagger();
    let reject = |definition: &str, value: Value| -> String {
        match s.validate_definition(definition, &value) {
            Err(Rejection::Schema {
                pointer, reason, ..
            }) => format!("{pointer}: {reason}"),
            other => panic!("{definition} {value}: expected a schema rejection, got {other:?}"),
        }
    };
    assert!(reject("Vm", json!({})).contains("missing required property `state`"));
    assert!(reject("Vm", json!({"state": "Paused", "x": 1})).contains("unknown property `x`"));
    assert!(reject("Vm", json!({"state": "paused"})).contains("is not one of"));
    assert!(reject("Vm", json!({"state": 1})).contains("is not one of"));
    assert!(
        reject("Vsock", json!({"guest_cid": "3", "uds_path": "v"})).contains("expected an integer")
    );
    assert!(reject("Vsock", json!({"guest_cid": -1, "uds_path": "v"})).contains("minimum"));
    assert!(
        reject("TokenBucket", json!({"size": 1.5, "refill_time": 1}))
            .contains("expected an integer")
    );
    assert!(reject("TokenBucket", json!({"size": -1, "refill_time": 1})).contains("minimum 0"));
    assert!(reject(
        "VcpuFeatures",
        json!({"index": 3_000_000_000u64, "bitmap": "0b1"})
    )
    .contains("does not fit"));
    let deep = reject(
        "SnapshotLoadParams",
        json!({"snapshot_path": "s", "vsock_override": {"uds": "x"}}),
    );
    assert!(deep.starts_with("body.vsock_override:"), "{deep}");
    assert!(reject("MmdsConfig", json!({"network_interfaces": [1]}))
        .contains("body.network_interfaces[0]"));
    // Extra properties are fine where the schema says so.
    s.validate_definition("MmdsContentsObject", &json!({"anything": {"goes": [1, 2]}}))
        .unwrap();
}

#[test]
fn routes_and_body_presence() {
    let s = swagger();
    let m = s
        .validate_request(
            "PUT",
            "/drives/rootfs",
            Some(br#"{"drive_id":"rootfs","is_root_device":true}"#),
        )
        .unwrap();
    assert_eq!(m.operation_id, "putGuestDriveByID");
    assert_eq!(
        m.path_params.get("drive_id").map(String::as_str),
        Some("rootfs")
    );
    assert!(matches!(
        s.validate_request("PUT", "/drives/", Some(b"{}")),
        Err(Rejection::UnknownRoute { .. })
    ));
    assert!(matches!(
        s.validate_request("PUT", "/drives/a/b", Some(b"{}")),
        Err(Rejection::UnknownRoute { .. })
    ));
    assert!(matches!(
        s.validate_request("DELETE", "/vm", None),
        Err(Rejection::UnknownRoute { .. })
    ));
    assert!(matches!(
        s.validate_request("PATCH", "/vm", None),
        Err(Rejection::MissingBody { .. })
    ));
    assert!(matches!(
        s.validate_request("GET", "/version", Some(b"{}")),
        Err(Rejection::UnexpectedBody { .. })
    ));
    assert!(matches!(
        s.validate_request("PUT", "/vm", Some(b"{")),
        Err(Rejection::UnknownRoute { .. })
    ));
    assert!(matches!(
        s.validate_request("PATCH", "/vm", Some(b"{")),
        Err(Rejection::InvalidJson(_))
    ));
    // The body of PUT /machine-config is not marked required in the swagger.
    s.validate_request("PUT", "/machine-config", None).unwrap();
    s.validate_request("PATCH", "/balloon/hinting/stop", None)
        .unwrap();
    // Responses: a 204 has no body, a 200 a matching one, errors the Error object.
    s.validate_response("patchVm", 204, None).unwrap();
    s.validate_response("patchVm", 400, Some(&json!({"fault_message": "x"})))
        .unwrap();
    assert!(s
        .validate_response("patchVm", 204, Some(&json!({})))
        .is_err());
    assert!(s
        .validate_response("getFirecrackerVersion", 200, Some(&json!({"version": "1"})))
        .is_err());
}

#[test]
fn unsupported_keywords_and_missing_files_fail_loudly() {
    let text = r##"
swagger: "2.0"
info: {version: "x"}
paths:
  /vm:
    patch:
      operationId: patchVm
      parameters:
        - {name: body, in: body, required: true, schema: {$ref: "#/definitions/Vm"}}
      responses: {204: {description: ok}}
definitions:
  Vm:
    type: object
    properties:
      state: {type: string, pattern: "^P"}
"##;
    let err = Swagger::parse(text, Path::new("test.yaml")).unwrap_err();
    assert!(
        matches!(&err, SwaggerError::Unsupported { what, .. } if what.contains("pattern")),
        "{err}"
    );
    let broken_ref = text
        .replace("pattern: \"^P\"", "enum: [Paused]")
        .replace("definitions/Vm\"", "definitions/Nope\"");
    let err = Swagger::parse(&broken_ref, Path::new("test.yaml")).unwrap_err();
    assert!(err.to_string().contains("unresolvable $ref"), "{err}");
    let ok = text.replace("pattern: \"^P\"", "enum: [Paused]");
    let s = Swagger::parse(&ok, Path::new("test.yaml")).unwrap();
    assert!(s
        .validate_request("PATCH", "/vm", Some(br#"{"state":"Paused"}"#))
        .is_ok());

    let err = Swagger::load(Path::new("/nonexistent/firecracker-api.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/firecracker-api.yaml"),
        "{err}"
    );
}
