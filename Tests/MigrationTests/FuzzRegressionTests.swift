import Foundation
import Testing
@testable import Machine
@testable import Migration

/// Inputs the fuzzers (Tools/fuzz) found to break a decoder, each kept as the smallest stream
/// or payload that showed it.
@Suite("fuzz regressions")
struct FuzzRegressionTests {
    @Test("a sealed section whose plaintext claims to be sealed again is refused, not handed on as a section")
    func sealedInsideSealedRefused() throws {
        // Found by the `sections` target: the reader opened the outer section and returned the
        // inner `sealed` type to its caller as if it were a section of the protocol.
        let (a, b) = try SealedStreamTests().sealedPair()
        try a.send(.sealed, bytes: Array(#"{"desc":"x"}"#.utf8))
        #expect(throws: MigrationError.stream("section 0 is a sealed section inside a sealed one")) { try b.receive() }
    }
}
