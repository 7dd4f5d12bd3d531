/** OHIF's configuration as `certseg viewer` serves it (as /app-config.js).
 *
 * One data source: the PACS behind this same origin, reached through the viewer's read-only
 * /dicom-web/ path, so the browser needs no credentials and no cross-origin permission.
 * Local files, ?url= data sources and dynamic configuration stay off, as in OHIF's secure default.
 */
window.config = {
  name: 'certseg',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'pacs',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'pacs',
      configuration: {
        friendlyName: 'PACS (through CertSeg viewer)',
        name: 'pacs',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        supportsStow: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        // a PDF is fetched as bulk data (Orthanc's DICOMweb renders images, not documents)
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
