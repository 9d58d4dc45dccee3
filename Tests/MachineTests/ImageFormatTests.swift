import Testing
@testable import Machine

@Suite("disk image formats")
struct ImageFormatTests {
    @Test("qcow2, QED, VMDK, VHDX, VHD, VDI and LUKS headers are recognised; zeros and text are raw")
    func recognisesContainers() {
        let qcow2: [UInt8] = [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3] + [UInt8](repeating: 0, count: 504)
        #expect(ImageFormat.recognise(qcow2) == "qcow2")
        #expect(ImageFormat.recognise(Array("QED".utf8) + [0, 1, 0]) == "QED")
        #expect(ImageFormat.recognise(Array("KDMV".utf8) + [1, 0, 0, 0]) == "VMDK")
        #expect(ImageFormat.recognise(Array("vhdxfile".utf8)) == "VHDX")
        #expect(ImageFormat.recognise(Array("conectix".utf8)) == "VHD")
        var vdi = [UInt8](repeating: 0, count: 512)
        vdi.replaceSubrange(64..<68, with: [0x7f, 0x10, 0xda, 0xbe])
        #expect(ImageFormat.recognise(vdi) == "VDI")
        #expect(ImageFormat.recognise(Array("LUKS".utf8) + [0xba, 0xbe, 0, 2]) == "LUKS")
        #expect(ImageFormat.recognise([UInt8](repeating: 0, count: 512)) == nil)
        #expect(ImageFormat.recognise(Array("hello, raw disk".utf8)) == nil)
        #expect(ImageFormat.recognise([0x51, 0x46]) == nil)
    }
}
