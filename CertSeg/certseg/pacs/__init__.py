"""CertSeg on the hospital network: query, retrieve, certify and send back (`certseg pacs`).

Import rule: only this subpackage talks to the network; it uses the rest of certseg through
`batch.certify_input`, exactly as `certseg certify` does.  Its clients (pynetdicom,
dicomweb-client) come with the optional extra `certseg[pacs]`.
"""
