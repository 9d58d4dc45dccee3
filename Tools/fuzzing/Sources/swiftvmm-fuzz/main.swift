import CFuzzerDriver
import Glibc

// One libFuzzer binary for every target; SWIFTVMM_FUZZ_TARGET names the one to run (Tools/fuzz
// sets it). Each target feeds one input to a decoder of untrusted bytes and checks what the
// decoder promises; a crash, an ASan report or a failed check is a bug in swiftvmm.

/// The fuzz targets by name (the name is also the corpus directory, Tools/fuzzing/corpus/NAME).
nonisolated(unsafe) let fuzzTargets: [(name: String, run: ([UInt8]) -> Void)] = [
    ("sections", SectionsTarget.run),
    ("pages", PagesTarget.run),
    ("state", StateTarget.run),
    ("boot", BootTarget.run),
    ("control", ControlTarget.run),
]

/// The target SWIFTVMM_FUZZ_TARGET names; exits with a list of targets when there is none.
nonisolated(unsafe) let selectedTarget: ([UInt8]) -> Void = {
    let names = fuzzTargets.map(\.name).joined(separator: ", ")
    guard let raw = getenv("SWIFTVMM_FUZZ_TARGET") else {
        say("set SWIFTVMM_FUZZ_TARGET to one of: \(names)")
        exit(2)
    }
    let name = String(cString: raw)
    guard let target = fuzzTargets.first(where: { $0.name == name }) else {
        say("unknown target '\(name)' (targets: \(names))")
        exit(2)
    }
    return target.run
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selectedTarget(bytes)
    return 0
}

/// Stops the run with `message` when a promise of the code under test does not hold.
func require(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        say("check failed: \(message())")
        abort()
    }
}

/// `value` as 4 big-endian bytes.
func bigEndian32(_ value: UInt32) -> [UInt8] {
    [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)]
}

/// One line on stderr.
func say(_ line: String) {
    let bytes = Array("swiftvmm-fuzz: \(line)\n".utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

// The program: libFuzzer's driver, with its flags from the command line.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzTestOneInput))
