// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for swiftvmm's decoders of untrusted input, in one binary that picks its
// target from SWIFTVMM_FUZZ_TARGET. Built and run by Tools/fuzz (it passes
// -sanitize=fuzzer,address and -parse-as-library); not part of the main build.
let package = Package(
    name: "swiftvmm-fuzzing",
    dependencies: [
        .package(name: "swiftvmm", path: "../.."),
    ],
    targets: [
        .executableTarget(name: "swiftvmm-fuzz", dependencies: [
            .product(name: "SwiftVMMCore", package: "swiftvmm"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
