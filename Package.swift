// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "swiftvmm",
    products: [
        .executable(name: "swiftvmm", targets: ["swiftvmm"]),
        // For the fuzzing package (Tools/fuzzing), which drives the decoders of untrusted input.
        .library(name: "SwiftVMMCore", targets: ["KVM", "Machine", "Migration", "Control"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C shim over linux/kvm.h: ioctl numbers and fixed-arity wrappers, no logic.
        .target(name: "CKVM"),
        // C shim over the rest of Linux the devices and threads use: TAP, signals, atomics.
        .target(name: "CLinux"),
        // Hot-path helpers for the migration stream (hardware CRC-32C).
        .target(name: "CFast"),
        // System libraries used by migration (LZ4 batches, FDT device state).
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CFDT", providers: [.apt(["libfdt-dev"])]),
        // libseccomp: the system-call filters swiftvmm confines its threads with.
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        // OpenSSL's libcrypto: AES-256-GCM in place for the sealed stream (no allocation per section),
        // HKDF-SHA256 for its keys and HMAC-SHA256 for the handshake's proofs.
        .systemLibrary(name: "COpenSSL", providers: [.apt(["libssl-dev"])]),
        .target(name: "KVM", dependencies: ["CKVM"]),
        .target(name: "Machine", dependencies: ["KVM", "CLinux", "CSeccomp"]),
        // libcrypto is linked statically: only the AES-GCM, HKDF and HMAC code the sealed stream
        // uses comes along, and a guest that never migrates with a key never maps any of it.
        .target(name: "Migration", dependencies: [
            "Machine", "CLZ4", "CFDT", "CFast", "COpenSSL",
        ], linkerSettings: [.linkedLibrary(":libcrypto.a")]),
        .target(name: "Control", dependencies: ["Machine", "Migration"]),
        .executableTarget(name: "swiftvmm", dependencies: [
            "Machine", "Migration", "Control",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "KVMTests", dependencies: ["KVM"]),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "KVM"]),
        .testTarget(name: "MigrationTests", dependencies: ["Migration", "Machine"]),
        .testTarget(name: "ControlTests", dependencies: ["Control"]),
        .testTarget(name: "CommandTests", dependencies: ["swiftvmm"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Machine", "Harness"], exclude: ["qmp"]),
        // The harness the integration tests and the benchmarks share: child processes with
        // collected output, namespaces, the migration rig, a QMP/JSON-lines client, clean-up.
        .target(name: "Harness", path: "Tests/Harness"),
        .testTarget(name: "HarnessTests", dependencies: ["Harness", "BenchSuite", "SoakSuite"]),
        // The benchmark suite (Tools/bench/run): scenarios, results, the smoke check; and its CLI.
        .target(name: "BenchSuite", dependencies: ["Harness"], path: "Tools/bench/Sources/BenchSuite"),
        .executableTarget(name: "swiftvmm-bench", dependencies: [
            "BenchSuite", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Tools/bench/Sources/swiftvmm-bench"),
        // The soak run (Tools/soak): one guest with memory, disk and network work moved back and
        // forth between two swiftvmm processes, checked after every hop; and its CLI.
        .target(name: "SoakSuite", dependencies: ["Harness"], path: "Tools/soak-suite/SoakSuite"),
        .executableTarget(name: "swiftvmm-soak", dependencies: [
            "SoakSuite", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Tools/soak-suite/swiftvmm-soak"),
    ],
    swiftLanguageModes: [.v6]
)
