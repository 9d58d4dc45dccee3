// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for swiftvmm's decoders of untrusted input, in one binary that picks its
// target from SWIFTVMM_FUZZ_TARGET. Built and run by Tools/fuzz (with -sanitize=fuzzer,address);
// not part of the main build. The program's main hands over to libFuzzer (LLVMFuzzerRunDriver).
let package = Package(
    name: "swiftvmm-fuzzing",
    dependencies: [
        .package(name: "swiftvmm", path: "../.."),
    ],
    targets: [
        .target(name: "CFuzzerDriver"),
        .executableTarget(name: "swiftvmm-fuzz", dependencies: [
            "CFuzzerDriver", .product(name: "SwiftVMMCore", package: "swiftvmm"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
