"""OpenAPI post-processing for the partner API (canonical paths, error-code catalogue)."""

from core.api.schema import schema_postprocess_for
from core.errors import PARTNER_ERROR_CODES

postprocess = schema_postprocess_for(PARTNER_ERROR_CODES)
