"""CertSeg on the hospital network: `certseg pacs` (query, retrieve, certify, send back), `certseg listen`
(a DICOM node), the Orthanc plugin, `certseg viewer` (OHIF over DICOMweb) and the reference deployment.

Import rule: only this subpackage talks to the network, and it imports only CertSeg's foundation; the
certification itself is handed to it as a function (the commands pass `runner.certify_input`, the driver
`certseg certify` runs too).  Its clients (pynetdicom, dicomweb-client) come with the extra `certseg[pacs]`.
"""
